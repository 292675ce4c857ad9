#pragma once
// The mixed-precision contract of sgdx's optimizers (PyTorch's
// `_step_supports_amp_scaling`): sgdx::amp::GradScaler hands the scaler's state
// to the step instead of unscaling and skipping on the host itself.
#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <vector>

namespace sgdx::optim {

class AmpScaledStep {
 public:
  virtual ~AmpScaledStep() = default;
  /// One step under a gradient scaler.
  ///   grad_scale: optional float32 scalar (on the parameters' device): the
  ///     gradients in .grad are still multiplied by it; the step divides them
  ///     (in place, so .grad holds the unscaled gradient afterwards).
  ///   found_inf: optional float32 scalar: non-zero means the step is skipped
  ///     and changes nothing at all (parameters, every state tensor, counters,
  ///     random streams, loss statistics). It is read at most once per step.
  virtual torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                    torch::optim::Optimizer::LossClosure closure = nullptr) = 0;
};

namespace detail {
/// True when `found_inf` is defined and non-zero (the one device read of a step).
bool amp_skip(const at::Tensor& found_inf, const char* who);
/// Checks grad_scale (one float32 value, no host read) and divides `grads` by it in place.
void amp_unscale_(const std::vector<at::Tensor>& grads, const at::Tensor& grad_scale, const char* who);
/// step_scaled of the closure-driven optimizers: skip without evaluating any closure, or
/// step with closures whose gradients are divided by grad_scale after they run: the batch
/// closure and, for the step's duration, the optimizer's full-gradient closure `*full`.
torch::Tensor closure_step_scaled(torch::optim::Optimizer& optimizer, const char* who, const at::Tensor& grad_scale,
                                  const at::Tensor& found_inf, torch::optim::Optimizer::LossClosure closure,
                                  torch::optim::Optimizer::LossClosure* full);
}  // namespace detail

}  // namespace sgdx::optim

#pragma once
// The mixed-precision contract of sgdx's optimizers (PyTorch's
// `_step_supports_amp_scaling`): sgdx::amp::GradScaler hands the scaler's state
// to the step instead of unscaling and skipping on the host itself.
#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include "sgdx/export.h"

#include <vector>

namespace sgdx::dist {
class Communicator;
}

namespace sgdx::optim {

class SGDX_API AmpScaledStep {
 public:
  virtual ~AmpScaledStep() = default;
  /// One step under a gradient scaler.
  ///   grad_scale: optional float32 scalar (on the parameters' device): the
  ///     gradients in .grad are still multiplied by it; the step divides them
  ///     (in place, so .grad holds the unscaled gradient afterwards).
  ///   found_inf: optional float32 scalar: non-zero means the step is skipped
  ///     and changes nothing at all (parameters, every state tensor, counters,
  ///     random streams, loss statistics; GradQueueSGDM drops the skipped batch's
  ///     observed loss). It is read once per step.
  /// With a closure and grad_scale, the gradients the closure computes are checked
  /// for inf/nan as they are unscaled and the finding is added to found_inf in
  /// place (so the scaler's update() backs off); the step is skipped on it.
  virtual torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                    torch::optim::Optimizer::LossClosure closure = nullptr) = 0;
};

namespace detail {
/// True when `found_inf` is defined and non-zero (the one device read of a step).
SGDX_API bool amp_skip(const at::Tensor& found_inf, const char* who);
/// Checks grad_scale (one float32 value, no host read) and divides `grads` by it in place.
SGDX_API void amp_unscale_(const std::vector<at::Tensor>& grads, const at::Tensor& grad_scale,
                           const char* who);
/// Divides `grads` by grad_scale and adds 1 to found_inf (in place) if any is inf/nan:
/// _amp_foreach_non_finite_check_and_unscale_ per device and dtype, no host read.
SGDX_API void amp_check_and_unscale_(const std::vector<at::Tensor>& grads, const at::Tensor& grad_scale,
                                     const at::Tensor& found_inf, const char* who);
/// The start of step_scaled once the closure (if any) has run: with a closure and
/// grad_scale the closure's gradients are checked as they are unscaled (into found_inf,
/// which the scaler then sees); otherwise found_inf was formed from .grad before the step
/// and grad_scale divides the gradients after the skip test. True: skip the step.
/// With `comm` (more than one rank) found_inf is first made its maximum over ranks.
SGDX_API bool amp_begin_step(torch::optim::Optimizer& optimizer, const at::Tensor& grad_scale,
                             const at::Tensor& found_inf, bool closure_ran, const char* who,
                             dist::Communicator* comm = nullptr);
/// The .grad of every parameter of `optimizer` that has one.
SGDX_API std::vector<at::Tensor> defined_grads(torch::optim::Optimizer& optimizer);
/// step_scaled of the closure-driven optimizers: skip without evaluating any closure, or
/// step with closures whose gradients are checked and divided by grad_scale after they run
/// (the batch closure and, for the step's duration, the full-gradient closure `*full`).
/// Their overflow is known only after the step, so the step runs on a snapshot of the
/// parameters and the optimizer's state, restored when found_inf turned non-zero (on
/// any rank of `comm`: found_inf is made its maximum over ranks before each test).
SGDX_API torch::Tensor closure_step_scaled(torch::optim::Optimizer& optimizer, const char* who,
                                           const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                           torch::optim::Optimizer::LossClosure closure,
                                           torch::optim::Optimizer::LossClosure* full,
                                           dist::Communicator* comm = nullptr);
}  // namespace detail

}  // namespace sgdx::optim

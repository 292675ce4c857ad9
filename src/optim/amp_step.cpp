#include "sgdx/optim/amp_step.h"

#include <ATen/ATen.h>

namespace sgdx::optim::detail {

bool amp_skip(const at::Tensor& found_inf, const char* who) {
  if (!found_inf.defined()) return false;
  TORCH_CHECK(found_inf.numel() == 1 && at::isFloatingType(found_inf.scalar_type()), who,
              ": found_inf must be one floating-point value, got ", found_inf.numel(), " values of ",
              found_inf.scalar_type());
  return found_inf.item<double>() != 0.0;
}

void amp_unscale_(const std::vector<at::Tensor>& grads, const at::Tensor& grad_scale, const char* who) {
  if (!grad_scale.defined() || grads.empty()) return;
  TORCH_CHECK(grad_scale.numel() == 1 && grad_scale.scalar_type() == at::kFloat, who,
              ": grad_scale must be one float32 value, got ", grad_scale.numel(), " values of ",
              grad_scale.scalar_type());
  // As the scaler's unscale_: a multiplication by the float32 reciprocal.
  const auto inv = grad_scale.reciprocal();
  for (const auto& g : grads) g.mul_(inv.device() == g.device() ? inv : inv.to(g.device()));
}

namespace {
torch::optim::Optimizer::LossClosure unscaled(torch::optim::Optimizer& optimizer,
                                              torch::optim::Optimizer::LossClosure closure,
                                              const at::Tensor& grad_scale, const char* who) {
  return [&optimizer, closure = std::move(closure), grad_scale, who] {
    auto loss = closure();
    std::vector<at::Tensor> grads;
    for (auto& group : optimizer.param_groups())
      for (auto& p : group.params())
        if (p.grad().defined()) grads.push_back(p.mutable_grad());
    amp_unscale_(grads, grad_scale, who);
    return loss;
  };
}
}  // namespace

torch::Tensor closure_step_scaled(torch::optim::Optimizer& optimizer, const char* who, const at::Tensor& grad_scale,
                                  const at::Tensor& found_inf, torch::optim::Optimizer::LossClosure closure,
                                  torch::optim::Optimizer::LossClosure* full) {
  if (amp_skip(found_inf, who)) return {};
  if (!grad_scale.defined()) return optimizer.step(std::move(closure));
  // The full-gradient closure is wrapped for this step only (restored on any exit).
  struct Restore {
    torch::optim::Optimizer::LossClosure* slot;
    torch::optim::Optimizer::LossClosure saved;
    ~Restore() {
      if (slot != nullptr) *slot = std::move(saved);
    }
  } restore{full, full != nullptr ? *full : nullptr};
  if (full != nullptr && *full != nullptr) *full = unscaled(optimizer, *full, grad_scale, who);
  return optimizer.step(closure != nullptr ? unscaled(optimizer, std::move(closure), grad_scale, who) : nullptr);
}

}  // namespace sgdx::optim::detail

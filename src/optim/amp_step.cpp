#include "sgdx/optim/amp_step.h"

#include "sgdx/optim/detail/param_groups.h"
#include "sgdx/optim/distributed.h"

#include <ATen/ATen.h>
#include <torch/serialize/archive.h>

#include <sstream>
#include <utility>

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

std::vector<at::Tensor> defined_grads(torch::optim::Optimizer& optimizer) {
  std::vector<at::Tensor> grads;
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params())
      if (p.grad().defined()) grads.push_back(p.mutable_grad());
  return grads;
}

void amp_check_and_unscale_(const std::vector<at::Tensor>& grads, const at::Tensor& grad_scale,
                            const at::Tensor& found_inf, const char* who) {
  TORCH_CHECK(grad_scale.numel() == 1 && grad_scale.scalar_type() == at::kFloat, who,
              ": grad_scale must be one float32 value, got ", grad_scale.numel(), " values of ",
              grad_scale.scalar_type());
  TORCH_CHECK(found_inf.defined() && found_inf.numel() == 1 && found_inf.scalar_type() == at::kFloat, who,
              ": a closure under grad_scale needs found_inf (one float32 value) to record its overflow");
  detail::DeviceDtypeBuckets<std::vector<at::Tensor>> groups;  // as the fused op takes them
  for (const auto& g : grads) groups[g].push_back(g);
  for (auto& [device, dtype, list] : groups) {
    const auto inv = grad_scale.to(device).reciprocal();
    auto found = found_inf.device() == device ? found_inf : at::zeros_like(found_inf, device);
    at::_amp_foreach_non_finite_check_and_unscale_(list, found, inv);
    if (!found.is_same(found_inf)) found_inf.add_(found.to(found_inf.device()));
  }
}

bool amp_begin_step(torch::optim::Optimizer& optimizer, const at::Tensor& grad_scale,
                    const at::Tensor& found_inf, bool closure_ran, const char* who,
                    dist::Communicator* comm) {
  const bool checked = closure_ran && grad_scale.defined();
  if (checked) amp_check_and_unscale_(defined_grads(optimizer), grad_scale, found_inf, who);
  agree_found_inf_(comm, found_inf);
  if (amp_skip(found_inf, who)) return true;
  if (grad_scale.defined() && !checked) amp_unscale_(defined_grads(optimizer), grad_scale, who);
  return false;
}

namespace {
torch::optim::Optimizer::LossClosure checked(torch::optim::Optimizer& optimizer,
                                             torch::optim::Optimizer::LossClosure closure,
                                             const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                             const char* who) {
  return [&optimizer, closure = std::move(closure), grad_scale, found_inf, who] {
    auto loss = closure();
    amp_check_and_unscale_(defined_grads(optimizer), grad_scale, found_inf, who);
    return loss;
  };
}
}  // namespace

torch::Tensor closure_step_scaled(torch::optim::Optimizer& optimizer, const char* who,
                                  const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                  torch::optim::Optimizer::LossClosure closure,
                                  torch::optim::Optimizer::LossClosure* full, dist::Communicator* comm) {
  agree_found_inf_(comm, found_inf);
  if (amp_skip(found_inf, who)) return {};
  if (!grad_scale.defined() || closure == nullptr) return optimizer.step(std::move(closure));
  // The snapshot that an overflow inside the closures restores.
  std::vector<at::Tensor> before;
  {
    at::NoGradGuard no_grad;
    for (auto& group : optimizer.param_groups())
      for (auto& p : group.params()) before.push_back(p.detach().clone());
  }
  std::stringstream state;
  {
    torch::serialize::OutputArchive out;
    optimizer.save(out);
    out.save_to(state);
  }
  // The full-gradient closure is wrapped for this step only (restored on any exit).
  struct Restore {
    torch::optim::Optimizer::LossClosure* slot;
    torch::optim::Optimizer::LossClosure saved;
    ~Restore() {
      if (slot != nullptr) *slot = std::move(saved);
    }
  } restore{full, full != nullptr ? *full : nullptr};
  if (full != nullptr && *full != nullptr) *full = checked(optimizer, *full, grad_scale, found_inf, who);
  auto loss = optimizer.step(checked(optimizer, std::move(closure), grad_scale, found_inf, who));
  agree_found_inf_(comm, found_inf);  // a closure overflowed on some rank: every rank restores
  if (!amp_skip(found_inf, who)) return loss;
  at::NoGradGuard no_grad;
  size_t k = 0;
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params()) p.detach().copy_(before[k++]);
  torch::serialize::InputArchive in;
  in.load_from(state);
  optimizer.load(in);
  return {};
}

}  // namespace sgdx::optim::detail

#include "sgdx/amp/grad_scaler.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "sgdx/optim/amp_step.h"
#include "sgdx/optim/distributed.h"

namespace sgdx::amp {

void GradScalerOptions::validate() const {
  TORCH_CHECK(std::isfinite(init_scale()) && init_scale() > 0,
              "GradScaler: init_scale must be finite and > 0, got ", init_scale());
  TORCH_CHECK(std::isfinite(growth_factor()) && growth_factor() > 1,
              "GradScaler: growth_factor must be > 1, got ", growth_factor());
  TORCH_CHECK(backoff_factor() > 0 && backoff_factor() < 1,
              "GradScaler: backoff_factor must be in (0, 1), got ", backoff_factor());
  // The tracker is an int32 on the device.
  TORCH_CHECK(growth_interval() >= 1 && growth_interval() <= INT32_MAX,
              "GradScaler: growth_interval must be in [1, 2^31 - 1], got ", growth_interval());
}

bool operator==(const GradScalerOptions& lhs, const GradScalerOptions& rhs) {
  return lhs.init_scale() == rhs.init_scale() && lhs.growth_factor() == rhs.growth_factor() &&
         lhs.backoff_factor() == rhs.backoff_factor() && lhs.growth_interval() == rhs.growth_interval() &&
         lhs.enabled() == rhs.enabled();
}

GradScaler::GradScaler(GradScalerOptions options) : options_(options), pending_scale_(options.init_scale()) {
  options_.validate();
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) {
  TORCH_CHECK(loss.defined(), "GradScaler::scale: the loss is undefined");
  if (!is_enabled()) return loss;
  if (!scale_.defined()) {
    const auto on = at::TensorOptions().device(loss.device());
    scale_ = at::full({}, pending_scale_, on.dtype(at::kFloat));
    growth_tracker_ = at::full({}, pending_tracker_, on.dtype(at::kInt));
  }
  return loss * scale_.to(loss.device());
}

void GradScaler::check_scale(const char* caller) const {
  TORCH_CHECK(scale_.defined(), "GradScaler::", caller,
              ": there is no scale yet; call scale(loss) (and backward) earlier in the iteration");
}

void GradScaler::unscale_grads_(torch::optim::Optimizer& optimizer, const at::Tensor& inv_scale,
                                bool allow_fp16, const char* caller, OptimizerState& state) const {
  at::NoGradGuard no_grad;
  // (device type, device index, dtype) -> gradients: one fused launch each.
  std::map<std::tuple<int, int, int>, std::vector<at::Tensor>> groups;
  std::vector<c10::Device> devices;
  const auto& param_groups = optimizer.param_groups();
  for (const auto g : c10::irange(param_groups.size())) {
    const auto& params = param_groups[g].params();
    for (const auto i : c10::irange(params.size())) {
      const auto& grad = params[i].grad();
      if (!grad.defined()) continue;
      const auto dtype = grad.scalar_type();
      const auto which = [&] { return c10::str("GradScaler::", caller, ": parameter ", i, " of group ", g); };
      TORCH_CHECK(grad.layout() == at::kStrided, which(), " has a sparse gradient (layout ", grad.layout(),
                  "); only dense gradients can be unscaled");
      TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                  which(), " has a ", dtype,
                  " gradient; only float32, float64, float16 and bfloat16 gradients can be unscaled");
      // PyTorch's rule: float16 master weights lose the updates that scaling saves.
      TORCH_CHECK(allow_fp16 || dtype != at::kHalf, which(),
                  " has a float16 gradient; keep the parameters in float32 (autocast computes in float16)");
      const auto dev = grad.device();
      groups[{static_cast<int>(dev.type()), dev.index(), static_cast<int>(dtype)}].push_back(grad);
      if (std::find(devices.begin(), devices.end(), dev) == devices.end()) devices.push_back(dev);
    }
  }
  state.found_inf_per_device.clear();
  std::vector<at::Tensor> inv_per_device;
  for (const auto& dev : devices) {
    state.found_inf_per_device.emplace_back(dev, at::zeros({}, inv_scale.options().device(dev)));
    inv_per_device.push_back(inv_scale.to(dev));
  }
  for (auto& [key, grads] : groups) {
    const auto& dev = grads.front().device();
    const auto d = std::find(devices.begin(), devices.end(), dev) - devices.begin();
    at::_amp_foreach_non_finite_check_and_unscale_(grads, state.found_inf_per_device[d].second,
                                                   inv_per_device[d]);
  }
}

at::Tensor GradScaler::found_inf_sum(const OptimizerState& state) const {
  auto sum = at::zeros({}, scale_.options());
  for (const auto& [dev, found] : state.found_inf_per_device) sum.add_(found.to(scale_.device()));
  return sum;
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (!is_enabled()) return;
  check_scale("unscale_");
  auto& state = per_optimizer_[&optimizer];
  TORCH_CHECK(
      state.stage != Stage::unscaled,
      "GradScaler::unscale_: unscale_() has already been called on this optimizer since the last update()");
  TORCH_CHECK(state.stage != Stage::stepped, "GradScaler::unscale_: unscale_() is being called after step()");
  // 1/S in float64, rounded once to float32 (PyTorch's inv_scale).
  const auto inv_scale = scale_.to(at::kDouble).reciprocal().to(at::kFloat);
  unscale_grads_(optimizer, inv_scale, /*allow_fp16=*/false, "unscale_", state);
  state.stage = Stage::unscaled;
}

torch::Tensor GradScaler::step(torch::optim::Optimizer& optimizer,
                               torch::optim::Optimizer::LossClosure closure) {
  if (!is_enabled()) return optimizer.step(std::move(closure));
  check_scale("step");
  auto& state = per_optimizer_[&optimizer];
  TORCH_CHECK(state.stage != Stage::stepped,
              "GradScaler::step: step() has already been called since the last update()");

  if (auto* amp = dynamic_cast<sgdx::optim::AmpScaledStep*>(&optimizer)) {
    const bool unscaled = state.stage == Stage::unscaled;
    if (!unscaled) {
      // Only the check: the optimizer divides by S inside its step.
      unscale_grads_(optimizer, at::ones({}, scale_.options()), /*allow_fp16=*/true, "step", state);
    }
    // A closure-driven optimizer may hold no gradient yet: nothing was found.
    if (state.found_inf_per_device.empty()) {
      state.found_inf_per_device.emplace_back(scale_.device(), at::zeros({}, scale_.options()));
    }
    // One flag for the step, kept as this optimizer's finding: with a closure the optimizer
    // adds what the closure's gradients show (checked as it unscales them) in place, so
    // update() sees both that and what .grad held when step() was called.
    auto found = found_inf_sum(state);
    sgdx::optim::detail::agree_found_inf_(comm_.get(), found);
    state.found_inf_per_device.assign(1, {found.device(), found});
    auto loss = amp->step_scaled(unscaled ? at::Tensor() : scale_, found, std::move(closure));
    state.stage = Stage::stepped;
    return loss;
  }

  TORCH_CHECK(closure == nullptr,
              "GradScaler::step: a closure needs an optimizer that implements "
              "sgdx::optim::AmpScaledStep (the gradients it computes would stay scaled), as in PyTorch");
  if (state.stage == Stage::ready) unscale_(optimizer);
  TORCH_CHECK(!state.found_inf_per_device.empty(),
              "GradScaler::step: the optimizer has no gradients: no inf checks were recorded");
  auto found = found_inf_sum(state);
  sgdx::optim::detail::agree_found_inf_(comm_.get(), found);
  state.found_inf_per_device.assign(1, {found.device(), found});
  torch::Tensor loss;
  if (found.item<float>() == 0.0f) loss = optimizer.step();  // the one host read
  state.stage = Stage::stepped;
  return loss;
}

void GradScaler::update() {
  if (!is_enabled()) return;
  check_scale("update");
  auto found_inf = at::zeros({}, scale_.options());
  bool any = false;
  for (const auto& [opt, state] : per_optimizer_) {
    for (const auto& [dev, found] : state.found_inf_per_device) {
      found_inf.add_(found.to(scale_.device()));
      any = true;
    }
  }
  TORCH_CHECK(any,
              "GradScaler::update: no inf checks were recorded; call step() (or unscale_()) before update()");
  sgdx::optim::detail::agree_found_inf_(comm_.get(), found_inf);  // S moves alike on every rank
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf, options_.growth_factor(),
                         options_.backoff_factor(), options_.growth_interval());
  per_optimizer_.clear();
}

void GradScaler::update(double new_scale) {
  if (!is_enabled()) return;
  check_scale("update");
  TORCH_CHECK(std::isfinite(new_scale) && new_scale > 0,
              "GradScaler::update: new_scale must be finite and > 0, got ", new_scale);
  scale_.fill_(new_scale);
  per_optimizer_.clear();
}

double GradScaler::get_scale() const {
  if (!is_enabled()) return 1.0;
  return scale_.defined() ? scale_.item<double>() : pending_scale_;
}

int64_t GradScaler::get_growth_tracker() const {
  if (!is_enabled()) return 0;
  return growth_tracker_.defined() ? growth_tracker_.item<int64_t>() : pending_tracker_;
}

void GradScaler::save(torch::serialize::OutputArchive& archive) const {
  // Tensors on the CPU: a checkpoint from a GPU run loads anywhere.
  auto scale = scale_.defined() ? scale_.cpu() : at::full({}, pending_scale_, at::kFloat);
  auto tracker = growth_tracker_.defined() ? growth_tracker_.cpu() : at::full({}, pending_tracker_, at::kInt);
  archive.write("grad_scaler_scale", scale);
  archive.write("grad_scaler_growth_tracker", tracker);
  archive.write("grad_scaler_init_scale", c10::IValue(options_.init_scale()));
  archive.write("grad_scaler_growth_factor", c10::IValue(options_.growth_factor()));
  archive.write("grad_scaler_backoff_factor", c10::IValue(options_.backoff_factor()));
  archive.write("grad_scaler_growth_interval", c10::IValue(options_.growth_interval()));
  archive.write("grad_scaler_enabled", c10::IValue(options_.enabled()));
}

void GradScaler::load(torch::serialize::InputArchive& archive) {
  at::Tensor scale, tracker;
  archive.read("grad_scaler_scale", scale);
  archive.read("grad_scaler_growth_tracker", tracker);
  TORCH_CHECK(scale.numel() == 1 && scale.scalar_type() == at::kFloat,
              "GradScaler::load: the scale must be one float32 value, got ", scale.numel(), " values of ",
              scale.scalar_type());
  TORCH_CHECK(tracker.numel() == 1 && tracker.scalar_type() == at::kInt,
              "GradScaler::load: the growth tracker must be one int32 value, got ", tracker.numel(),
              " values of ", tracker.scalar_type());
  const double s = scale.item<double>();
  TORCH_CHECK(std::isfinite(s) && s > 0, "GradScaler::load: the scale must be finite and > 0, got ", s);
  GradScalerOptions loaded = options_;  // `enabled` stays this scaler's
  c10::IValue v;
  archive.read("grad_scaler_init_scale", v);
  loaded.init_scale(v.toDouble());
  archive.read("grad_scaler_growth_factor", v);
  loaded.growth_factor(v.toDouble());
  archive.read("grad_scaler_backoff_factor", v);
  loaded.backoff_factor(v.toDouble());
  archive.read("grad_scaler_growth_interval", v);
  loaded.growth_interval(v.toInt());
  loaded.validate();
  options_ = loaded;
  pending_scale_ = s;
  pending_tracker_ = tracker.item<int64_t>();
  if (scale_.defined()) {
    scale_.copy_(scale.reshape({}));
    growth_tracker_.copy_(tracker.reshape({}));
  }
  // Flags from before the load belong to another scale.
  per_optimizer_.clear();
}

}  // namespace sgdx::amp

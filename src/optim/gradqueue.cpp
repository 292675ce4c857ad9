// GradQueueSGDM: construction, the optimizer-wide options, the loss trend, and the plain
// step. The window's state machine is src/optim/gradqueue_window.h, the options'
// list sgdx/optim/gradqueue.h, checkpoints gradqueue_state.cpp, the clustered step
// gradqueue_clustered.cpp.
#include "sgdx/optim/gradqueue.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>

#include "gradqueue_internal.h"
#include "gradqueue_window.h"
#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/optim/detail/param_groups.h"

namespace sgdx::optim {

namespace detail {
const GradQueueSGDMOptions& as_gq(const torch::optim::OptimizerOptions& o, size_t group) {
  return options_as<GradQueueSGDMOptions>(o, group, "GradQueueSGDM");
}
GradQueueSGDMOptions& as_gq(torch::optim::OptimizerOptions& o, size_t group) {
  return options_as<GradQueueSGDMOptions>(o, group, "GradQueueSGDM");
}

void add_rho(at::Tensor& total, const at::Tensor& part) {
  const auto x = part.to(at::kDouble);
  if (!total.defined()) {
    total = x.clone();
  } else if (total.device() == x.device()) {
    total.add_(x);
  } else {
    total = total.cpu() + x.cpu();
  }
}

ops::GradQueueStepConfig step_config(const GradQueueSGDMOptions& o) {
  ops::GradQueueStepConfig c;
  c.lr = o.lr();
  c.momentum = o.momentum();
  c.dampening = o.dampening();
  c.weight_decay = o.weight_decay();
  c.nesterov = o.nesterov();
  c.rho_min = o.rho_min();
  c.rho_max = o.rho_max();
  c.kappa = o.kappa();
  c.eps = o.eps();
  c.per_element = o.granularity() == GradQueueGranularity::element;
  return c;
}
}  // namespace detail

using detail::as_gq;

GradQueueSGDM::GradQueueSGDM(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                             const GradQueueSGDMOptions& defaults)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                std::make_unique<GradQueueSGDMOptions>(defaults)),
      synced_(defaults) {
  defaults.validate();
  for (const auto& g : param_groups) add_param_group(g);
}

GradQueueSGDM::GradQueueSGDM(std::vector<torch::Tensor> params, const GradQueueSGDMOptions& defaults)
    : GradQueueSGDM({torch::optim::OptimizerParamGroup(std::move(params))}, defaults) {}

void GradQueueSGDM::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  sync_optimizer_wide();
  if (param_group.has_options())
    detail::check_optimizer_wide(as_gq(param_group.options(), param_groups_.size()), defaults_options(),
                                 param_groups_.size());
  detail::add_param_group_keeping_options<GradQueueSGDMOptions>(*this, param_group, "GradQueueSGDM");
}

void GradQueueSGDM::sync_optimizer_wide() {
  for (const auto gi : c10::irange(param_groups_.size()))
    detail::check_optimizer_wide(as_gq(param_groups_[gi].options(), gi), synced_, gi);
  synced_ = defaults_options();
  for (const auto gi : c10::irange(param_groups_.size()))
    detail::copy_optimizer_wide(as_gq(param_groups_[gi].options(), gi), synced_);
}

const GradQueueSGDMOptions& GradQueueSGDM::defaults_options() const {
  return static_cast<const GradQueueSGDMOptions&>(defaults());
}

void GradQueueSGDM::observe_loss(double loss) {
  TORCH_CHECK(std::isfinite(loss), "GradQueueSGDM: the observed loss is not finite: ", loss);
  pending_loss_ = loss;  // enters the EMA when the step is taken (a skipped step leaves it out)
}

void GradQueueSGDM::take_pending_loss(bool reduce) {
  if (auto* comm = reduce ? group() : nullptr) {
    // One loss per rank or none at all: the trend (and so L) must agree on every rank.
    const int world = comm->world_size();
    std::vector<at::Tensor> t = {
        at::tensor({pending_loss_ ? 1.0 : 0.0, pending_loss_.value_or(0.0)}, at::kDouble)};
    comm->all_reduce_sum(t);
    const double ranks = t[0][0].item<double>(), sum = t[0][1].item<double>();
    TORCH_CHECK(ranks == 0 || ranks == world, "GradQueueSGDM: ", ranks, " of ", world,
                " ranks observed a loss for this step; give one on every rank (a closure or observe_loss()) "
                "or on none");
    pending_loss_.reset();
    if (ranks > 0) pending_loss_ = sum / world;
  }
  if (!pending_loss_) return;
  const double loss = *pending_loss_;
  pending_loss_.reset();
  if (!has_loss_ema_) {
    loss_ema_ = loss;
    has_loss_ema_ = true;
    return;
  }
  const double beta = defaults_options().loss_beta();
  const double next = beta * loss_ema_ + (1.0 - beta) * loss;
  pending_trend_ = next < loss_ema_ ? 1 : -1;
  loss_ema_ = next;
}

GradQueueSGDMParamState& GradQueueSGDM::state_for(const torch::Tensor& p, const GradQueueSGDMOptions& o) {
  auto& slot = state_[p.unsafeGetTensorImpl()];
  if (!slot) {
    auto st = std::make_unique<GradQueueSGDMParamState>();
    detail::window_init(*st, p, o);
    slot = std::move(st);
  }
  auto& st = static_cast<GradQueueSGDMParamState&>(*slot);
  TORCH_CHECK(st.s1().sizes() == p.sizes(), "GradQueueSGDM: state has shape ", st.s1().sizes(),
              " but the parameter has ", p.sizes());
  TORCH_CHECK(
      detail::exact_storage(o) == st.queue().defined() &&
          (!st.queue().defined() || st.queue().size(0) == o.q_max()),
      "GradQueueSGDM: the state's queue does not match the options (storage or q_max changed mid-run)");
  return st;
}

ops::GradQueueTensor GradQueueSGDM::step_operands(const torch::Tensor& p, GradQueueSGDMParamState& st,
                                                  const GradQueueSGDMOptions& o, const torch::Tensor& grad,
                                                  const torch::Tensor& direction) {
  ops::GradQueueTensor t;
  t.param = p;
  t.grad = grad.contiguous();
  if (direction.defined()) {
    t.direction = direction.contiguous();
  } else {
    t.scarcity = detail::window_has_scarcity(st, o);
  }
  t.first_step = !st.momentum_buffer().defined();
  if (o.momentum() != 0 && t.first_step) st.momentum_buffer(at::empty_like(t.param));
  t.momentum = st.momentum_buffer();
  detail::window_push_operands(t, st, o);
  return t;
}

at::Tensor GradQueueSGDM::push_and_step(const torch::Tensor& p, GradQueueSGDMParamState& st,
                                        const GradQueueSGDMOptions& o, const torch::Tensor& grad,
                                        const torch::Tensor& direction) {
  auto c = detail::step_config(o);
  if (direction.defined()) c.weight_decay = 0.0;  // the clustered step's gradients include it already
  const bool copy_back = !p.is_contiguous();
  auto t = step_operands(copy_back ? p.contiguous() : p, st, o, grad, direction);
  auto rho_sum = ops::gradqueue_step_(t, c);
  if (copy_back) p.copy_(t.param);
  detail::window_after_push(st, o);
  return rho_sum;
}

torch::Tensor GradQueueSGDM::step(LossClosure closure) {
  return step_scaled({}, {}, std::move(closure));
}

torch::Tensor GradQueueSGDM::step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                         LossClosure closure) {
  torch::NoGradGuard no_grad;
  sync_optimizer_wide();
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (detail::amp_begin_step(*this, grad_scale, found_inf, closure != nullptr, "GradQueueSGDM", group())) {
    pending_loss_.reset();  // the skipped batch's loss does not enter the window's trend either
    return loss;
  }
  if (loss.defined() && loss.numel() == 1) observe_loss(loss.item<double>());
  take_pending_loss(/*reduce=*/true);
  info_ = {};
  at::Tensor rho_sum;  // device sums of Delta-rho, read only when last_step_info() is asked for
  double elements = 0.0;
  bool first_info = true;
  const bool fused = defaults_options().fused_cuda();
  for (const auto gi : c10::irange(param_groups_.size())) {
    auto& group = param_groups_[gi];
    const auto& o = as_gq(group.options(), gi);
    // Contiguous CUDA tensors, one multi-tensor launch per (device, dtype).
    struct Bucket {
      std::vector<ops::GradQueueTensor> tensors;
      std::vector<GradQueueSGDMParamState*> states;
    };
    detail::DeviceDtypeBuckets<Bucket> buckets;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) {
        // No gradient this step: no push, but the window length follows the loss like the others'.
        auto it = state_.find(p.unsafeGetTensorImpl());
        if (it != state_.end())
          detail::window_resize(static_cast<GradQueueSGDMParamState&>(*it->second), o, pending_trend_);
        continue;
      }
      TORCH_CHECK(!p.grad().is_sparse(), "GradQueueSGDM: sparse gradients are not supported");
      TORCH_CHECK(p.grad().scalar_type() == p.scalar_type(), "GradQueueSGDM: gradient dtype ",
                  p.grad().scalar_type(), " differs from parameter dtype ", p.scalar_type());
      auto& st = state_for(p, o);
      detail::window_resize(st, o, pending_trend_);
      st.step(st.step() + 1);
      if (first_info) info_.window = st.window(), first_info = false;
      elements += static_cast<double>(p.numel());
      if (fused && p.is_cuda() && p.is_contiguous() && p.grad().device() == p.device()) {
        auto& bucket = buckets[p];
        bucket.tensors.push_back(step_operands(p, st, o, p.grad(), at::Tensor()));
        bucket.states.push_back(&st);
      } else {
        detail::add_rho(rho_sum, push_and_step(p, st, o, p.grad(), at::Tensor()));
      }
    }
    for (auto& entry : buckets) {
      auto& b = entry.bucket;
      detail::add_rho(rho_sum, ops::gradqueue_step_cuda_(b.tensors, detail::step_config(o)).sum());
      for (auto* st : b.states)
        detail::window_after_push(*st, o);  // resync reads the rows the kernel wrote (stream order)
    }
  }
  pending_trend_ = 0;
  rho_total_ = rho_sum;
  rho_elements_ = elements;
  return loss;
}

const GradQueueStepInfo& GradQueueSGDM::last_step_info() const {
  info_.mean_rho =
      rho_total_.defined() && rho_elements_ > 0 ? rho_total_.item<double>() / rho_elements_ : 1.0;
  return info_;
}

}  // namespace sgdx::optim

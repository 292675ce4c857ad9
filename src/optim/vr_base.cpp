#include "sgdx/optim/vr_base.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/utils.h>

#include <sstream>

namespace sgdx::optim {

void elastic_net_prox_(at::Tensor& v, double c, double l1, double l2) {
  TORCH_CHECK(c >= 0 && l1 >= 0 && l2 >= 0,
              "elastic_net_prox_: step and regularisation must be >= 0, got c=", c, " l1=", l1, " l2=", l2);
  if (l1 > 0) v.copy_(at::sign(v) * at::clamp_min(v.abs() - c * l1, 0.0));
  if (l2 > 0) v.div_(1.0 + c * l2);
}

VROptimizerBase::VROptimizerBase(std::unique_ptr<torch::optim::OptimizerOptions> defaults, const char* name)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{}, std::move(defaults)), name_(name) {}

torch::Tensor VROptimizerBase::step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                           LossClosure batch) {
  return detail::closure_step_scaled(*this, name_, grad_scale, found_inf, std::move(batch), &full_gradient_,
                                     group());
}

void VROptimizerBase::check_closures(const LossClosure& batch) const {
  TORCH_CHECK(batch != nullptr, name_, "::step needs the minibatch closure");
  TORCH_CHECK(full_gradient_ != nullptr, name_, ": call set_full_gradient_closure() before step()");
  TORCH_CHECK(!param_groups_.empty(), name_, ": no parameters");
}

std::vector<torch::Tensor> VROptimizerBase::params() const {
  std::vector<torch::Tensor> out;
  for (const auto& g : param_groups_)
    for (const auto& p : g.params())
      if (p.requires_grad()) out.push_back(p);
  return out;
}

std::vector<size_t> VROptimizerBase::param_group_indices() const {
  std::vector<size_t> out;
  for (const auto g : c10::irange(param_groups_.size()))
    for (const auto& p : param_groups_[g].params())
      if (p.requires_grad()) out.push_back(g);
  return out;
}

void VROptimizerBase::set_params(const std::vector<torch::Tensor>& values) {
  torch::NoGradGuard no_grad;
  auto ps = params();
  for (const auto k : c10::irange(ps.size())) ps[k].copy_(values[k]);
}

void VROptimizerBase::set_local_components(int64_t components) {
  TORCH_CHECK(components >= 0, name_, ": the local component count must be >= 0 (0: equal shards), got ",
              components);
  local_components_ = components;
}

std::vector<torch::Tensor> VROptimizerBase::grads_at(const std::vector<torch::Tensor>* at,
                                                     const LossClosure& f, torch::Tensor* loss, bool reduce) {
  if (at != nullptr) set_params(*at);
  auto ps = params();
  for (auto& p : ps) p.mutable_grad().reset();
  torch::Tensor l;
  {
    at::AutoGradMode enable_grad(true);
    l = f();
  }
  std::vector<torch::Tensor> g;
  g.reserve(ps.size());
  for (auto& p : ps) g.push_back(p.grad().defined() ? p.grad().detach().clone() : torch::zeros_like(p));
  if (reduce && group() != nullptr) {
    // The loss travels with the gradients (same all-reduce when the dtypes match).
    auto reduced = g;
    if (loss != nullptr && l.defined()) reduced.push_back(l = l.detach().clone());
    detail::average_over_ranks_(group(), reduced);
  }
  if (loss != nullptr) *loss = l;
  return g;
}

std::vector<torch::Tensor> VROptimizerBase::full_gradient_at(const std::vector<torch::Tensor>* at,
                                                             int64_t n) {
  auto* comm = group();
  // Weighted when any rank gave its count: every rank must take the same collectives
  // (a rank that gave none, or 0, weighs 0).
  const bool weighted = comm != nullptr && dist::global_any(comm, local_components_ > 0);
  auto g = grads_at(at, full_gradient_, nullptr, /*reduce=*/!weighted);
  if (weighted) {
    const double total = dist::global_sum(comm, static_cast<double>(local_components_));
    TORCH_CHECK(total > 0, name_, ": the ranks' component counts sum to ", total);
    for (auto& x : g) x.mul_(static_cast<double>(local_components_) / total);
    detail::sum_over_ranks_(comm, g);
  }
  evaluations_ += n;
  return g;
}

void VROptimizerBase::save_counters(torch::serialize::OutputArchive& archive) const {
  archive.write("vr/evaluations", c10::IValue(evaluations_));
  for (const auto& [k, v] : counters_) archive.write("vr/" + k, c10::IValue(v));
  std::string keys;
  for (const auto& [k, v] : counters_) keys += (keys.empty() ? "" : ",") + k;
  archive.write("vr/keys", c10::IValue(keys));
}

void VROptimizerBase::load_counters(torch::serialize::InputArchive& archive) {
  c10::IValue v;
  archive.read("vr/evaluations", v);
  evaluations_ = v.toInt();
  archive.read("vr/keys", v);
  counters_.clear();
  std::stringstream ss(v.toStringRef());
  for (std::string k; std::getline(ss, k, ',');) {
    c10::IValue x;
    archive.read("vr/" + k, x);
    counters_[k] = x.toDouble();
  }
}

}  // namespace sgdx::optim

#include "sgdx/optim/svrg.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <cmath>

#include "sgdx/detail/philox.h"
#include "sgdx/optim/detail/param_groups.h"

namespace sgdx::optim {

void elastic_net_prox_(at::Tensor& v, double c, double l1, double l2) {
  TORCH_CHECK(c >= 0 && l1 >= 0 && l2 >= 0,
              "elastic_net_prox_: step and regularisation must be >= 0, got c=", c, " l1=", l1, " l2=", l2);
  if (l1 > 0) v.copy_(at::sign(v) * at::clamp_min(v.abs() - c * l1, 0.0));
  if (l2 > 0) v.div_(1.0 + c * l2);
}

SVRGOptions::SVRGOptions(double lr) : lr_(lr) {}

void SVRGOptions::validate() const {
  TORCH_CHECK(lr() > 0, "SVRG: lr must be > 0, got ", lr());
  TORCH_CHECK(n() > 0, "SVRG: n (the number of components) must be > 0, got ", n());
  TORCH_CHECK(b() >= 1 && b() <= n(), "SVRG: minibatch size b must be in [1, n = ", n(), "], got ", b());
  TORCH_CHECK(m() >= 0, "SVRG: m must be >= 0 (0: ceil(2n/b)), got ", m());
  TORCH_CHECK(l1() >= 0, "SVRG: l1 must be >= 0, got ", l1());
  TORCH_CHECK(l2() >= 0, "SVRG: l2 must be >= 0, got ", l2());
}

bool operator==(const SVRGOptions& a, const SVRGOptions& b) {
  return a.lr() == b.lr() && a.n() == b.n() && a.b() == b.b() && a.m() == b.m() && a.l1() == b.l1() &&
         a.l2() == b.l2() && a.snapshot() == b.snapshot() && a.seed() == b.seed();
}

void SVRGOptions::serialize(torch::serialize::OutputArchive& archive) const {
  archive.write("lr", c10::IValue(lr()));
  archive.write("n", c10::IValue(n()));
  archive.write("b", c10::IValue(b()));
  archive.write("m", c10::IValue(m()));
  archive.write("l1", c10::IValue(l1()));
  archive.write("l2", c10::IValue(l2()));
  archive.write("snapshot", c10::IValue(static_cast<int64_t>(snapshot())));
  archive.write("seed", c10::IValue(static_cast<int64_t>(seed())));
}

void SVRGOptions::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue v;
  archive.read("lr", v);
  lr(v.toDouble());
  archive.read("n", v);
  n(v.toInt());
  archive.read("b", v);
  b(v.toInt());
  archive.read("m", v);
  m(v.toInt());
  archive.read("l1", v);
  l1(v.toDouble());
  archive.read("l2", v);
  l2(v.toDouble());
  archive.read("snapshot", v);
  snapshot(static_cast<SnapshotRule>(v.toInt()));
  archive.read("seed", v);
  seed(static_cast<uint64_t>(v.toInt()));
  validate();
}

double SVRGOptions::get_lr() const {
  return lr();
}
void SVRGOptions::set_lr(const double lr) {
  this->lr(lr);
}

void SVRGParamState::serialize(torch::serialize::OutputArchive& archive) const {
  if (snapshot().defined()) archive.write("snapshot", snapshot(), true);
  if (full_grad().defined()) archive.write("full_grad", full_grad(), true);
  if (candidate().defined()) archive.write("candidate", candidate(), true);
}

void SVRGParamState::serialize(torch::serialize::InputArchive& archive) {
  // A fresh tensor per read: reading into a defined tensor set_()s it in place.
  torch::Tensor s, g, c;
  if (archive.try_read("snapshot", s, true)) snapshot(s);
  if (archive.try_read("full_grad", g, true)) full_grad(g);
  if (archive.try_read("candidate", c, true)) candidate(c);
}

SVRG::SVRG(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, SVRGOptions defaults)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{}, std::make_unique<SVRGOptions>(defaults)) {
  defaults.validate();
  for (const auto& g : param_groups) add_param_group(g);
}

SVRG::SVRG(std::vector<torch::Tensor> params, SVRGOptions defaults)
    : SVRG({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void SVRG::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  detail::add_param_group_keeping_options<SVRGOptions>(*this, param_group, "SVRG");
}

void SVRG::set_full_gradient_closure(LossClosure full_gradient) {
  full_gradient_ = std::move(full_gradient);
}

const SVRGOptions& SVRG::options_of(size_t group) const {
  return static_cast<const SVRGOptions&>(param_groups_[group].options());
}

namespace {
std::vector<torch::Tensor> grads_of(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> out;
  for (const auto& p : params)
    out.push_back(p.grad().defined() ? p.grad().detach().clone() : torch::zeros_like(p));
  return out;
}
void clear_grads(const std::vector<torch::Tensor>& params) {
  for (auto p : params) p.mutable_grad().reset();
}
}  // namespace

torch::Tensor SVRG::step(LossClosure batch) {
  TORCH_CHECK(batch != nullptr, "SVRG::step needs the minibatch closure");
  TORCH_CHECK(full_gradient_ != nullptr, "SVRG: call set_full_gradient_closure() before step()");
  TORCH_CHECK(!param_groups_.empty(), "SVRG: no parameters");
  // n, b, m, the snapshot rule and the seed are the first group's (load() restores them there).
  const auto& d = options_of(0);
  const int64_t m = d.inner_steps();
  torch::NoGradGuard no_grad;
  auto call = [](const LossClosure& f) {
    at::AutoGradMode enable_grad(true);
    return f();
  };
  std::vector<torch::Tensor> params;
  std::vector<size_t> group_of;
  for (const auto g : c10::irange(param_groups_.size())) {
    for (const auto& p : param_groups_[g].params()) {
      if (!p.requires_grad()) continue;
      params.push_back(p);
      group_of.push_back(g);
    }
  }
  auto state_of = [&](const torch::Tensor& p) -> SVRGParamState& {
    auto& slot = state_[p.unsafeGetTensorImpl()];
    if (!slot) slot = std::make_unique<SVRGParamState>();
    return static_cast<SVRGParamState&>(*slot);
  };
  if (inner_ == 0) {  // a new stage: snapshot and full gradient
    clear_grads(params);
    call(full_gradient_);
    const auto mu = grads_of(params);
    for (const auto k : c10::irange(params.size())) {
      auto& st = state_of(params[k]);
      st.snapshot(params[k].detach().clone());
      st.full_grad(mu[k]);
    }
    evaluations_ += d.n();
    if (d.snapshot() == SnapshotRule::random) {
      const auto r = sgdx::detail::philox4x32_10(
          static_cast<uint32_t>(stage_), static_cast<uint32_t>(stage_ >> 32), 0, 0x5B26u,
          static_cast<uint32_t>(d.seed()), static_cast<uint32_t>(d.seed() >> 32));
      chosen_ = 1 + static_cast<int64_t>(r.v[0] % static_cast<uint64_t>(m));
    }
  }
  // The minibatch gradient at x~, then at x.
  std::vector<torch::Tensor> current;
  for (auto& p : params) {
    current.push_back(p.detach().clone());
    p.copy_(state_of(p).snapshot());
  }
  clear_grads(params);
  call(batch);
  const auto g_snap = grads_of(params);
  for (const auto k : c10::irange(params.size())) params[k].copy_(current[k]);
  clear_grads(params);
  auto loss = call(batch);
  const auto g_cur = grads_of(params);
  evaluations_ += 2 * d.b();
  for (const auto k : c10::irange(params.size())) {
    const auto& o = options_of(group_of[k]);
    auto& st = state_of(params[k]);
    auto p = params[k].detach();
    p.sub_(g_cur[k] - g_snap[k] + st.full_grad(), o.lr());
    elastic_net_prox_(p, o.lr(), o.l1(), o.l2());
  }
  ++inner_;
  if (d.snapshot() == SnapshotRule::random && inner_ == chosen_) {
    for (auto& p : params) state_of(p).candidate(p.detach().clone());
  }
  if (inner_ == m) {
    inner_ = 0;
    ++stage_;
    if (d.snapshot() == SnapshotRule::random) {
      for (auto& p : params) p.copy_(state_of(p).candidate());
    }
  }
  return loss;
}

void SVRG::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<SVRGParamState, SVRGOptions>(archive, *this);
  archive.write("svrg_inner", c10::IValue(inner_));
  archive.write("svrg_stage", c10::IValue(stage_));
  archive.write("svrg_chosen", c10::IValue(chosen_));
  archive.write("svrg_evaluations", c10::IValue(evaluations_));
}

void SVRG::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<SVRGParamState, SVRGOptions>(archive, *this);
  c10::IValue v;
  archive.read("svrg_inner", v);
  inner_ = v.toInt();
  archive.read("svrg_stage", v);
  stage_ = v.toInt();
  archive.read("svrg_chosen", v);
  chosen_ = v.toInt();
  archive.read("svrg_evaluations", v);
  evaluations_ = v.toInt();
}

}  // namespace sgdx::optim

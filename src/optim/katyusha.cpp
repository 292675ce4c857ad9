#include "sgdx/optim/katyusha.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>

namespace sgdx::optim {

KatyushaOptions::KatyushaOptions(double L) : L_(L) {}

void KatyushaOptions::validate() const {
  TORCH_CHECK(L() > 0 && std::isfinite(L()), "Katyusha: the smoothness L must be > 0, got ", L());
  TORCH_CHECK(n() > 0, "Katyusha: n (the number of components) must be > 0, got ", n());
  TORCH_CHECK(b() >= 1 && b() <= n(), "Katyusha: minibatch size b must be in [1, n = ", n(), "], got ", b());
  TORCH_CHECK(m() >= 0, "Katyusha: m must be >= 0, got ", m());
  TORCH_CHECK(l1() >= 0, "Katyusha: l1 must be >= 0, got ", l1());
  TORCH_CHECK(l2() >= 0, "Katyusha: l2 must be >= 0, got ", l2());
  TORCH_CHECK(lr() >= 0 && std::isfinite(lr()), "Katyusha: lr must be >= 0 (0: 1/(3L)), got ", lr());
}

void KatyushaOptions::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void KatyushaOptions::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "KatyushaOptions", /*added_later=*/{"lr"});
  validate();
}

double KatyushaOptions::get_lr() const {
  return lr() > 0 ? lr() : 1.0 / (3.0 * L());
}
void KatyushaOptions::set_lr(const double lr) {
  TORCH_CHECK(lr > 0, "Katyusha: lr must be > 0, got ", lr);
  this->lr(lr);
}

void KatyushaParamState::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void KatyushaParamState::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "KatyushaParamState");
}

Katyusha::Katyusha(const std::vector<torch::optim::OptimizerParamGroup>& groups,
                   const KatyushaOptions& defaults)
    : VROptimizerBase(std::make_unique<KatyushaOptions>(defaults), "Katyusha") {
  defaults.validate();
  add_groups<KatyushaOptions>(groups);
}

Katyusha::Katyusha(std::vector<torch::Tensor> params, const KatyushaOptions& options)
    : Katyusha({torch::optim::OptimizerParamGroup(std::move(params))}, options) {}

// A stage starts: the full gradient at x~, and a fresh weighted sum of y's.
void Katyusha::start_stage(const std::vector<torch::Tensor>& params) {
  const auto xt = point<KatyushaParamState>([](const KatyushaParamState& st) { return st.xt(); });
  const auto mu = full_gradient_at(&xt, options_of<KatyushaOptions>(0).n());
  for (const auto k : c10::irange(params.size())) {
    auto& st = state_of<KatyushaParamState>(params[k]);
    st.mu(mu[k]);
    st.ysum(torch::zeros_like(params[k]));
  }
  counters_["wsum"] = 0;
}

// z and y from v; eta = lr, written as 1/(3L) while lr is 0 (the rounding of the paper's formula).
void Katyusha::update(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& x,
                      const std::vector<torch::Tensor>& v, double alpha, double w) {
  const auto& o = options_of<KatyushaOptions>(0);
  const double eta_inv = o.lr() > 0 ? 1.0 / o.lr() : 3.0 * o.L();
  const auto group = param_group_indices();
  for (const auto k : c10::irange(params.size())) {
    auto& st = state_of<KatyushaParamState>(params[k]);
    const auto& go = options_of<KatyushaOptions>(group[k]);
    auto z = st.z() - alpha * v[k];
    elastic_net_prox_(z, alpha, go.l1(), go.l2());
    auto y = x[k] - v[k] / eta_inv;
    elastic_net_prox_(y, 1.0 / eta_inv, go.l1(), go.l2());
    st.z(z);
    st.y(y);
    st.ysum(st.ysum() + w * y);
  }
}

torch::Tensor Katyusha::step(LossClosure batch) {
  check_closures(batch);
  const auto& o = options_of<KatyushaOptions>(0);
  const int64_t m = o.inner_steps();
  const double L = o.L(), sigma = o.l2();
  torch::NoGradGuard no_grad;
  const auto ps = params();
  if (!counters_.count("j")) {
    for (const auto& p : ps) {
      auto& st = state_of<KatyushaParamState>(p);
      st.y(p.detach().clone());
      st.z(p.detach().clone());
      st.xt(p.detach().clone());
    }
    counters_["j"] = counters_["s"] = counters_["wsum"] = 0;
  }
  const double j = counters_["j"], s = counters_["s"];
  const double tau2 = o.b() == 1 ? 0.5 : 1.0 / (2.0 * double(o.b()));
  const double tau1 = sigma > 0 ? std::min(std::sqrt(8.0 * double(o.b() * m) * sigma / (3.0 * L)) * tau2, 0.5)
                                : 2.0 / (s + 4.0);
  const double alpha = o.lr() > 0 ? o.lr() / tau1 : 1.0 / (3.0 * tau1 * L);
  if (j == 0) start_stage(ps);
  std::vector<torch::Tensor> x;
  for (const auto& p : ps) {
    const auto& st = state_of<KatyushaParamState>(p);
    x.push_back(tau1 * st.z() + tau2 * st.xt() + (1 - tau1 - tau2) * st.y());
  }
  torch::Tensor loss;
  const auto g1 = grads_at(&x, batch, &loss);
  const auto xt = point<KatyushaParamState>([](const KatyushaParamState& st) { return st.xt(); });
  const auto g0 = grads_at(&xt, batch);
  evaluations_ += 2 * o.b();
  std::vector<torch::Tensor> v;
  for (const auto k : c10::irange(ps.size()))
    v.push_back(state_of<KatyushaParamState>(ps[k]).mu() + g1[k] - g0[k]);
  const double w = std::pow(1.0 + alpha * sigma, j);
  update(ps, x, v, alpha, w);
  counters_["wsum"] += w;
  counters_["j"] = j + 1;
  if (j + 1 >= double(m)) {  // the stage ends: x~ is the weighted average of its y's
    for (const auto& p : ps) {
      auto& st = state_of<KatyushaParamState>(p);
      st.xt(st.ysum() / counters_["wsum"]);
    }
    counters_["j"] = 0;
    counters_["s"] = s + 1;
  }
  set_params(point<KatyushaParamState>([](const KatyushaParamState& st) { return st.y(); }));
  return loss;
}

void Katyusha::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<KatyushaParamState, KatyushaOptions>(archive, *this);
  save_counters(archive);
}

void Katyusha::load(torch::serialize::InputArchive& archive) {
  load_state<KatyushaParamState, KatyushaOptions>(archive);
  load_counters(archive);
}

}  // namespace sgdx::optim

#include "sgdx/optim/dasvrda.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <cmath>

namespace sgdx::optim {

DASVRDAOptions::DASVRDAOptions(double L) : L_(L) {}

int64_t DASVRDAOptions::batch() const {
  return b() > 0 ? b() : static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n()))));
}
int64_t DASVRDAOptions::inner_steps() const {
  return m() > 0 ? m() : (n() + batch() - 1) / batch();
}
double DASVRDAOptions::gamma() const {
  return (3.0 + std::sqrt(9.0 + 8.0 * double(batch()) / double(inner_steps() + 1))) / 2.0;
}
double DASVRDAOptions::eta() const {
  return lr() > 0 ? lr() : 1.0 / ((1.0 + gamma() * double(inner_steps() + 1) / double(batch())) * L());
}
int64_t DASVRDAOptions::period() const {
  if (restart_period() > 0) return restart_period();
  TORCH_CHECK(l2() > 0, "DASVRDA: periodic restart needs l2 > 0 or an explicit restart_period");
  const double kappa = L() / l2();
  return 1 + static_cast<int64_t>(std::ceil(std::sqrt(kappa) *
                                            (double(batch()) / double(n()) + 1.0 / std::sqrt(double(n())))));
}

void DASVRDAOptions::validate() const {
  TORCH_CHECK(L() > 0 && std::isfinite(L()), "DASVRDA: the smoothness L must be > 0, got ", L());
  TORCH_CHECK(n() > 0, "DASVRDA: n (the number of components) must be > 0, got ", n());
  TORCH_CHECK(b() >= 0 && b() <= n(), "DASVRDA: minibatch size b must be in [1, n = ", n(),
              "] (0: ceil(sqrt(n))), got ", b());
  TORCH_CHECK(m() >= 0, "DASVRDA: m must be >= 0, got ", m());
  TORCH_CHECK(lr() >= 0, "DASVRDA: lr (eta) must be >= 0 (0: theory value), got ", lr());
  TORCH_CHECK(l1() >= 0, "DASVRDA: l1 must be >= 0, got ", l1());
  TORCH_CHECK(l2() >= 0, "DASVRDA: l2 must be >= 0, got ", l2());
  if (restart() == Restart::periodic) (void)period();
}

void DASVRDAOptions::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void DASVRDAOptions::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "DASVRDAOptions");
  validate();
}

void DASVRDAParamState::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void DASVRDAParamState::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "DASVRDAParamState");
}

DASVRDA::DASVRDA(const std::vector<torch::optim::OptimizerParamGroup>& groups, const DASVRDAOptions& defaults)
    : VROptimizerBase(std::make_unique<DASVRDAOptions>(defaults), "DASVRDA") {
  defaults.validate();
  add_groups<DASVRDAOptions>(groups);
  counters_["restarts"] = 0;
}

DASVRDA::DASVRDA(std::vector<torch::Tensor> params, const DASVRDAOptions& options)
    : DASVRDA({torch::optim::OptimizerParamGroup(std::move(params))}, options) {}

// x~_{-1} = x~_0 = z~_0 = x_0, theta~_0 = 1 - 1/gamma.
void DASVRDA::start_outer_loop(const std::vector<torch::Tensor>& params) {
  for (const auto& p : params) {
    auto& st = state_of<DASVRDAParamState>(p);
    st.xt1(p.detach().clone());
    st.xt2(p.detach().clone());
    st.zt(p.detach().clone());
  }
  counters_["k"] = 0;
  counters_["s"] = 1;
  counters_["theta_prev"] = 1 - 1 / options_of<DASVRDAOptions>(0).gamma();
  counters_["have_yprev"] = 0;
}

// y~_s from x~_{s-1}, x~_{s-2}, z~_{s-1} and theta~_{s-1}, theta~_s.
void DASVRDA::compute_y(const std::vector<torch::Tensor>& params) {
  const double gamma = options_of<DASVRDAOptions>(0).gamma();
  const double th_s = (1 - 1 / gamma) * (counters_["s"] + 2) / 2, th_p = counters_["theta_prev"];
  for (const auto& p : params) {
    auto& st = state_of<DASVRDAParamState>(p);
    st.yt(st.xt1() + ((th_p - 1) / th_s) * (st.xt1() - st.xt2()) + (th_p / th_s) * (st.zt() - st.xt1()));
  }
  counters_["theta_s"] = th_s;
}

bool DASVRDA::restart_now(const std::vector<torch::Tensor>& params) {
  const auto& o = options_of<DASVRDAOptions>(0);
  if (o.restart() == Restart::periodic) return counters_["s"] > double(o.period());
  if (o.restart() != Restart::adaptive || counters_["have_yprev"] <= 0 || counters_["s"] <= 1) return false;
  double dot = 0;  // <y~_{s-1} - x~_{s-1}, y~_s - x~_{s-1}> > 0: y~ points back
  for (const auto& p : params) {
    auto& st = state_of<DASVRDAParamState>(p);
    dot += ((st.yprev() - st.xt1()) * (st.yt() - st.xt1())).sum().item<double>();
  }
  return dot > 0;
}

// y~_s (after a restart if one is due), mu = grad F(x~_{s-1}) (not at y~), x_0 = z_0 = y~_s.
void DASVRDA::start_stage(const std::vector<torch::Tensor>& params) {
  compute_y(params);
  if (restart_now(params)) {  // start the outer loop afresh from x~_{s-1}
    for (const auto& p : params) {
      auto& st = state_of<DASVRDAParamState>(p);
      st.xt2(st.xt1().clone());
      st.zt(st.xt1().clone());
    }
    counters_["theta_prev"] = 1 - 1 / options_of<DASVRDAOptions>(0).gamma();
    counters_["s"] = 1;
    counters_["restarts"] += 1;
    compute_y(params);
  }
  const auto xt1 = point<DASVRDAParamState>([](const DASVRDAParamState& st) { return st.xt1(); });
  const auto mu = full_gradient_at(&xt1, options_of<DASVRDAOptions>(0).n());
  for (const auto k : c10::irange(params.size())) {
    auto& st = state_of<DASVRDAParamState>(params[k]);
    st.mu(mu[k]);
    st.x(st.yt().clone());
    st.z(st.yt().clone());
    st.z0(st.yt().clone());
    st.gbar(torch::zeros_like(params[k]));
  }
}

// Inner step k of One-Stage-AccSVRDA; returns the minibatch loss at y_k.
torch::Tensor DASVRDA::inner_step(const std::vector<torch::Tensor>& params, const LossClosure& batch) {
  const auto& o = options_of<DASVRDAOptions>(0);
  const double k = counters_["k"] + 1;
  const double th_k = (k + 1) / 2, th_km1 = k / 2;
  std::vector<torch::Tensor> yk;
  for (const auto& p : params) {
    const auto& st = state_of<DASVRDAParamState>(p);
    yk.push_back((1 - 1 / th_k) * st.x() + (1 / th_k) * st.z());
  }
  torch::Tensor loss;
  const auto g1 = grads_at(&yk, batch, &loss);
  const auto xt1 = point<DASVRDAParamState>([](const DASVRDAParamState& st) { return st.xt1(); });
  const auto g0 = grads_at(&xt1, batch);
  evaluations_ += 2 * o.batch();
  const double c = o.eta() * th_k * th_km1;
  const auto group = param_group_indices();
  for (const auto i : c10::irange(params.size())) {
    auto& st = state_of<DASVRDAParamState>(params[i]);
    const auto& go = options_of<DASVRDAOptions>(group[i]);
    auto v = st.mu() + g1[i] - g0[i];
    st.gbar((1 - 1 / th_k) * st.gbar() + (1 / th_k) * v);
    auto z = st.z0() - c * st.gbar();
    elastic_net_prox_(z, c, go.l1(), go.l2());
    st.z(z);
    st.x((1 - 1 / th_k) * st.x() + (1 / th_k) * z);
  }
  counters_["k"] = k;
  return loss;
}

// (x~_s, z~_s) = (x_m, z_m).
void DASVRDA::end_stage(const std::vector<torch::Tensor>& params) {
  for (const auto& p : params) {
    auto& st = state_of<DASVRDAParamState>(p);
    st.xt2(st.xt1());
    st.xt1(st.x().clone());
    st.zt(st.z().clone());
    st.yprev(st.yt().clone());
  }
  counters_["have_yprev"] = 1;
  counters_["theta_prev"] = counters_["theta_s"];
  counters_["s"] += 1;
  counters_["k"] = 0;
}

torch::Tensor DASVRDA::step(LossClosure batch) {
  check_closures(batch);
  torch::NoGradGuard no_grad;
  const auto ps = params();
  if (!counters_.count("k")) start_outer_loop(ps);
  if (counters_["k"] == 0) start_stage(ps);
  auto loss = inner_step(ps, batch);
  if (counters_["k"] >= double(options_of<DASVRDAOptions>(0).inner_steps())) end_stage(ps);
  set_params(point<DASVRDAParamState>([](const DASVRDAParamState& st) { return st.x(); }));
  return loss;
}

void DASVRDA::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<DASVRDAParamState, DASVRDAOptions>(archive, *this);
  save_counters(archive);
}

void DASVRDA::load(torch::serialize::InputArchive& archive) {
  load_state<DASVRDAParamState, DASVRDAOptions>(archive);
  load_counters(archive);
}

}  // namespace sgdx::optim

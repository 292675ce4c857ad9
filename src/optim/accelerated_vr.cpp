#include "sgdx/optim/accelerated_vr.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <cmath>
#include <sstream>

#include "sgdx/optim/detail/param_groups.h"
#include "sgdx/optim/svrg.h"

namespace sgdx::optim {

// ---- options -------------------------------------------------------------

KatyushaOptions::KatyushaOptions(double L) : L_(L) {}

void KatyushaOptions::validate() const {
  TORCH_CHECK(L() > 0 && std::isfinite(L()), "Katyusha: the smoothness L must be > 0, got ", L());
  TORCH_CHECK(n() > 0, "Katyusha: n (the number of components) must be > 0, got ", n());
  TORCH_CHECK(b() >= 1 && b() <= n(), "Katyusha: minibatch size b must be in [1, n = ", n(), "], got ", b());
  TORCH_CHECK(m() >= 0, "Katyusha: m must be >= 0, got ", m());
  TORCH_CHECK(l1() >= 0, "Katyusha: l1 must be >= 0, got ", l1());
  TORCH_CHECK(l2() >= 0, "Katyusha: l2 must be >= 0, got ", l2());
}

void KatyushaOptions::serialize(torch::serialize::OutputArchive& a) const {
  a.write("L", c10::IValue(L()));
  a.write("n", c10::IValue(n()));
  a.write("b", c10::IValue(b()));
  a.write("m", c10::IValue(m()));
  a.write("l1", c10::IValue(l1()));
  a.write("l2", c10::IValue(l2()));
}

void KatyushaOptions::serialize(torch::serialize::InputArchive& a) {
  c10::IValue v;
  a.read("L", v);
  L(v.toDouble());
  a.read("n", v);
  n(v.toInt());
  a.read("b", v);
  b(v.toInt());
  a.read("m", v);
  m(v.toInt());
  a.read("l1", v);
  l1(v.toDouble());
  a.read("l2", v);
  l2(v.toDouble());
  validate();
}

double KatyushaOptions::get_lr() const {
  return 1.0 / (3.0 * L());
}
void KatyushaOptions::set_lr(const double lr) {
  TORCH_CHECK(lr > 0, "Katyusha: lr must be > 0, got ", lr);
  L(1.0 / (3.0 * lr));
}

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

void DASVRDAOptions::serialize(torch::serialize::OutputArchive& a) const {
  a.write("L", c10::IValue(L()));
  a.write("n", c10::IValue(n()));
  a.write("b", c10::IValue(b()));
  a.write("m", c10::IValue(m()));
  a.write("lr", c10::IValue(lr()));
  a.write("l1", c10::IValue(l1()));
  a.write("l2", c10::IValue(l2()));
  a.write("restart", c10::IValue(static_cast<int64_t>(restart())));
  a.write("restart_period", c10::IValue(restart_period()));
}

void DASVRDAOptions::serialize(torch::serialize::InputArchive& a) {
  c10::IValue v;
  a.read("L", v);
  L(v.toDouble());
  a.read("n", v);
  n(v.toInt());
  a.read("b", v);
  b(v.toInt());
  a.read("m", v);
  m(v.toInt());
  a.read("lr", v);
  lr(v.toDouble());
  a.read("l1", v);
  l1(v.toDouble());
  a.read("l2", v);
  l2(v.toDouble());
  a.read("restart", v);
  restart(static_cast<Restart>(v.toInt()));
  a.read("restart_period", v);
  restart_period(v.toInt());
  validate();
}

// ---- shared machinery ------------------------------------------------------

void VRParamState::serialize(torch::serialize::OutputArchive& archive) const {
  std::string keys;
  for (const auto& [k, t] : v) {
    if (!t.defined()) continue;
    keys += (keys.empty() ? "" : ",") + k;
    archive.write(k, t, /*is_buffer=*/true);
  }
  archive.write("keys", c10::IValue(keys));
}

void VRParamState::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue keys;
  archive.read("keys", keys);
  std::stringstream ss(keys.toStringRef());
  for (std::string k; std::getline(ss, k, ',');) {
    torch::Tensor t;  // a fresh tensor per read: reading into a defined one set_()s it
    archive.read(k, t, /*is_buffer=*/true);
    v[k] = t;
  }
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

VRParamState& VROptimizerBase::state_of(const torch::Tensor& p) {
  auto& slot = state_[p.unsafeGetTensorImpl()];
  if (!slot) slot = std::make_unique<VRParamState>();
  return static_cast<VRParamState&>(*slot);
}

void VROptimizerBase::set_params(const std::string& point) {
  torch::NoGradGuard no_grad;
  for (auto& p : params()) p.copy_(state_of(p)[point]);
}

std::vector<torch::Tensor> VROptimizerBase::grads_at(const std::string& point, const LossClosure& f,
                                                     torch::Tensor* loss) {
  set_params(point);
  auto ps = params();
  for (auto& p : ps) p.mutable_grad().reset();
  torch::Tensor l;
  {
    at::AutoGradMode enable_grad(true);
    l = f();
  }
  if (loss != nullptr) *loss = l;
  std::vector<torch::Tensor> g;
  for (auto& p : ps) g.push_back(p.grad().defined() ? p.grad().detach().clone() : torch::zeros_like(p));
  return g;
}

void VROptimizerBase::save_base(torch::serialize::OutputArchive& archive) const {
  archive.write("vr/evaluations", c10::IValue(evaluations_));
  for (const auto& [k, v] : counters_) archive.write("vr/" + k, c10::IValue(v));
  std::string keys;
  for (const auto& [k, v] : counters_) keys += (keys.empty() ? "" : ",") + k;
  archive.write("vr/keys", c10::IValue(keys));
}

void VROptimizerBase::load_base(torch::serialize::InputArchive& archive) {
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

// ---- Katyusha ---------------------------------------------------------------

Katyusha::Katyusha(const std::vector<torch::optim::OptimizerParamGroup>& groups, KatyushaOptions defaults)
    : VROptimizerBase(std::vector<torch::optim::OptimizerParamGroup>{},
                      std::make_unique<KatyushaOptions>(defaults)) {
  defaults.validate();
  for (const auto& g : groups) detail::add_param_group_keeping_options<KatyushaOptions>(*this, g, "Katyusha");
}

Katyusha::Katyusha(std::vector<torch::Tensor> params, KatyushaOptions options)
    : Katyusha({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(options)) {}

torch::Tensor Katyusha::step(LossClosure batch) {
  TORCH_CHECK(batch != nullptr, "Katyusha::step needs the minibatch closure");
  TORCH_CHECK(full_gradient_ != nullptr, "Katyusha: call set_full_gradient_closure() before step()");
  const auto& o = static_cast<const KatyushaOptions&>(param_groups_[0].options());
  const int64_t m = o.inner_steps();
  const double L = o.L(), sigma = o.l2();
  torch::NoGradGuard no_grad;
  auto ps = params();
  if (!counters_.count("j")) {
    for (auto& p : ps) {
      auto& st = state_of(p);
      st["y"] = p.detach().clone();
      st["z"] = p.detach().clone();
      st["xt"] = p.detach().clone();
    }
    counters_["j"] = counters_["s"] = counters_["wsum"] = 0;
  }
  const double j = counters_["j"], s = counters_["s"];
  const double tau2 = o.b() == 1 ? 0.5 : 1.0 / (2.0 * double(o.b()));
  const double tau1 = sigma > 0 ? std::min(std::sqrt(8.0 * double(o.b() * m) * sigma / (3.0 * L)) * tau2, 0.5)
                                : 2.0 / (s + 4.0);
  const double alpha = 1.0 / (3.0 * tau1 * L);
  if (j == 0) {  // a stage starts: the full gradient at x~
    auto mu = grads_at("xt", full_gradient_);
    evaluations_ += o.n();
    for (const auto k : c10::irange(ps.size())) {
      auto& st = state_of(ps[k]);
      st["mu"] = mu[k];
      st["ysum"] = torch::zeros_like(ps[k]);
    }
    counters_["wsum"] = 0;
  }
  for (auto& p : ps) {
    auto& st = state_of(p);
    st["x"] = tau1 * st["z"] + tau2 * st["xt"] + (1 - tau1 - tau2) * st["y"];
  }
  torch::Tensor loss;
  const auto g1 = grads_at("x", batch, &loss);
  const auto g0 = grads_at("xt", batch);
  evaluations_ += 2 * o.b();
  const double w = std::pow(1.0 + alpha * sigma, j);
  const auto group = param_group_indices();
  for (const auto k : c10::irange(ps.size())) {
    auto& st = state_of(ps[k]);
    const auto& go = static_cast<const KatyushaOptions&>(param_groups_[group[k]].options());
    auto v = st["mu"] + g1[k] - g0[k];
    auto z = st["z"] - alpha * v;
    elastic_net_prox_(z, alpha, go.l1(), go.l2());
    auto y = st["x"] - v / (3.0 * L);
    elastic_net_prox_(y, 1.0 / (3.0 * L), go.l1(), go.l2());
    st["z"] = z;
    st["y"] = y;
    st["ysum"] = st["ysum"] + w * y;
  }
  counters_["wsum"] += w;
  counters_["j"] = j + 1;
  if (j + 1 >= double(m)) {
    for (auto& p : ps) {
      auto& st = state_of(p);
      st["xt"] = st["ysum"] / counters_["wsum"];
    }
    counters_["j"] = 0;
    counters_["s"] = s + 1;
  }
  set_params("y");
  return loss;
}

void Katyusha::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<VRParamState, KatyushaOptions>(archive, *this);
  save_base(archive);
}
void Katyusha::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<VRParamState, KatyushaOptions>(archive, *this);
  load_base(archive);
}

// ---- DASVRDA ----------------------------------------------------------------

DASVRDA::DASVRDA(const std::vector<torch::optim::OptimizerParamGroup>& groups, DASVRDAOptions defaults)
    : VROptimizerBase(std::vector<torch::optim::OptimizerParamGroup>{},
                      std::make_unique<DASVRDAOptions>(defaults)) {
  defaults.validate();
  for (const auto& g : groups) detail::add_param_group_keeping_options<DASVRDAOptions>(*this, g, "DASVRDA");
  counters_["restarts"] = 0;
}

DASVRDA::DASVRDA(std::vector<torch::Tensor> params, DASVRDAOptions options)
    : DASVRDA({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(options)) {}

torch::Tensor DASVRDA::step(LossClosure batch) {
  TORCH_CHECK(batch != nullptr, "DASVRDA::step needs the minibatch closure");
  TORCH_CHECK(full_gradient_ != nullptr, "DASVRDA: call set_full_gradient_closure() before step()");
  const auto& o = static_cast<const DASVRDAOptions&>(param_groups_[0].options());
  const int64_t m = o.inner_steps(), b = o.batch();
  const double gamma = o.gamma(), eta = o.eta();
  torch::NoGradGuard no_grad;
  auto ps = params();
  if (!counters_.count("k")) {  // x~_{-1} = x~_0 = z~_0 = x_0, theta~_0 = 1 - 1/gamma
    for (auto& p : ps) {
      auto& st = state_of(p);
      st["xt1"] = p.detach().clone();
      st["xt2"] = p.detach().clone();
      st["zt"] = p.detach().clone();
    }
    counters_["k"] = 0;
    counters_["s"] = 1;
    counters_["theta_prev"] = 1 - 1 / gamma;
    counters_["have_yprev"] = 0;
  }
  if (counters_["k"] == 0) {  // a stage starts
    auto compute_y = [&] {
      const double th_s = (1 - 1 / gamma) * (counters_["s"] + 2) / 2, th_p = counters_["theta_prev"];
      for (auto& p : ps) {
        auto& st = state_of(p);
        st["yt"] = st["xt1"] + ((th_p - 1) / th_s) * (st["xt1"] - st["xt2"]) +
                   (th_p / th_s) * (st["zt"] - st["xt1"]);
      }
      counters_["theta_s"] = th_s;
    };
    compute_y();
    bool restart = false;
    if (o.restart() == Restart::periodic && counters_["s"] > double(o.period())) restart = true;
    if (o.restart() == Restart::adaptive && counters_["have_yprev"] > 0 && counters_["s"] > 1) {
      double dot = 0;
      for (auto& p : ps) {
        auto& st = state_of(p);
        dot += ((st["yprev"] - st["xt1"]) * (st["yt"] - st["xt1"])).sum().item<double>();
      }
      restart = dot > 0;
    }
    if (restart) {  // start the outer loop afresh from x~_{s-1}
      for (auto& p : ps) {
        auto& st = state_of(p);
        st["xt2"] = st["xt1"].clone();
        st["zt"] = st["xt1"].clone();
      }
      counters_["theta_prev"] = 1 - 1 / gamma;
      counters_["s"] = 1;
      counters_["restarts"] += 1;
      compute_y();
    }
    auto mu = grads_at("xt1", full_gradient_);  // the full gradient at x~_{s-1}, not at y~
    evaluations_ += o.n();
    for (const auto k : c10::irange(ps.size())) {
      auto& st = state_of(ps[k]);
      st["mu"] = mu[k];
      st["x"] = st["yt"].clone();
      st["z"] = st["yt"].clone();
      st["z0"] = st["yt"].clone();
      st["gbar"] = torch::zeros_like(ps[k]);
    }
  }
  const double k = counters_["k"] + 1;
  const double th_k = (k + 1) / 2, th_km1 = k / 2;
  for (auto& p : ps) {
    auto& st = state_of(p);
    st["yk"] = (1 - 1 / th_k) * st["x"] + (1 / th_k) * st["z"];
  }
  torch::Tensor loss;
  const auto g1 = grads_at("yk", batch, &loss);
  const auto g0 = grads_at("xt1", batch);
  evaluations_ += 2 * b;
  const double c = eta * th_k * th_km1;
  const auto group = param_group_indices();
  for (const auto i : c10::irange(ps.size())) {
    auto& st = state_of(ps[i]);
    const auto& go = static_cast<const DASVRDAOptions&>(param_groups_[group[i]].options());
    auto v = st["mu"] + g1[i] - g0[i];
    st["gbar"] = (1 - 1 / th_k) * st["gbar"] + (1 / th_k) * v;
    auto z = st["z0"] - c * st["gbar"];
    elastic_net_prox_(z, c, go.l1(), go.l2());
    st["z"] = z;
    st["x"] = (1 - 1 / th_k) * st["x"] + (1 / th_k) * z;
  }
  counters_["k"] = k;
  if (k >= double(m)) {  // the stage ends: (x~_s, z~_s) = (x_m, z_m)
    for (auto& p : ps) {
      auto& st = state_of(p);
      st["xt2"] = st["xt1"];
      st["xt1"] = st["x"].clone();
      st["zt"] = st["z"].clone();
      st["yprev"] = st["yt"].clone();
    }
    counters_["have_yprev"] = 1;
    counters_["theta_prev"] = counters_["theta_s"];
    counters_["s"] += 1;
    counters_["k"] = 0;
  }
  set_params("x");
  return loss;
}

void DASVRDA::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<VRParamState, DASVRDAOptions>(archive, *this);
  save_base(archive);
}
void DASVRDA::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<VRParamState, DASVRDAOptions>(archive, *this);
  load_base(archive);
}

}  // namespace sgdx::optim

#include "sgdx/optim/svrg.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include "sgdx/detail/philox.h"
#include "sgdx/optim/detail/param_groups.h"

namespace sgdx::optim {

SVRGOptions::SVRGOptions(double lr) : lr_(lr) {}

void SVRGOptions::validate() const {
  TORCH_CHECK(lr() > 0, "SVRG: lr must be > 0, got ", lr());
  TORCH_CHECK(n() > 0, "SVRG: n (the number of components) must be > 0, got ", n());
  TORCH_CHECK(b() >= 1 && b() <= n(), "SVRG: minibatch size b must be in [1, n = ", n(), "], got ", b());
  TORCH_CHECK(m() >= 0, "SVRG: m must be >= 0 (0: ceil(2n/b)), got ", m());
  TORCH_CHECK(l1() >= 0, "SVRG: l1 must be >= 0, got ", l1());
  TORCH_CHECK(l2() >= 0, "SVRG: l2 must be >= 0, got ", l2());
}

void SVRGOptions::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void SVRGOptions::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "SVRGOptions");
  validate();
}

double SVRGOptions::get_lr() const {
  return lr();
}
void SVRGOptions::set_lr(const double lr) {
  this->lr(lr);
}

void SVRGParamState::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void SVRGParamState::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "SVRGParamState");
}

SVRG::SVRG(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, const SVRGOptions& defaults)
    : VROptimizerBase(std::make_unique<SVRGOptions>(defaults), "SVRG") {
  defaults.validate();
  add_groups<SVRGOptions>(param_groups);
}

SVRG::SVRG(std::vector<torch::Tensor> params, const SVRGOptions& defaults)
    : SVRG({torch::optim::OptimizerParamGroup(std::move(params))}, defaults) {}

void SVRG::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  add_groups<SVRGOptions>({param_group});
}

// A new stage: x~ = x, mu = grad F(x~), and the inner step whose iterate is the next x~.
void SVRG::start_stage(const std::vector<torch::Tensor>& params) {
  const auto& d = options_of<SVRGOptions>(0);
  const auto mu = full_gradient_at(nullptr, d.n());
  for (const auto k : c10::irange(params.size())) {
    auto& st = state_of<SVRGParamState>(params[k]);
    st.snapshot(params[k].detach().clone());
    st.full_grad(mu[k]);
  }
  if (d.snapshot() == SnapshotRule::random) {
    const auto r = sgdx::detail::philox4x32_10(
        static_cast<uint32_t>(stage_), static_cast<uint32_t>(stage_ >> 32), 0, 0x5B26u,
        static_cast<uint32_t>(d.seed()), static_cast<uint32_t>(d.seed() >> 32));
    chosen_ = 1 + static_cast<int64_t>(r.v[0] % static_cast<uint64_t>(d.inner_steps()));
  }
}

// After an inner step: keep the chosen iterate; at the stage's end, continue from x~'s rule.
void SVRG::finish_inner_step(const std::vector<torch::Tensor>& params) {
  const auto& d = options_of<SVRGOptions>(0);
  ++inner_;
  if (d.snapshot() == SnapshotRule::random && inner_ == chosen_) {
    for (const auto& p : params) state_of<SVRGParamState>(p).candidate(p.detach().clone());
  }
  if (inner_ == d.inner_steps()) {
    inner_ = 0;
    ++stage_;
    if (d.snapshot() == SnapshotRule::random) {
      for (const auto& p : params) p.detach().copy_(state_of<SVRGParamState>(p).candidate());
    }
  }
}

torch::Tensor SVRG::step(LossClosure batch) {
  check_closures(batch);
  // n, b, m, the snapshot rule and the seed are the first group's (load() restores them there).
  const auto& d = options_of<SVRGOptions>(0);
  torch::NoGradGuard no_grad;
  const auto params = this->params();
  if (inner_ == 0) start_stage(params);
  // The minibatch gradient at x~, then at x.
  std::vector<torch::Tensor> current;
  current.reserve(params.size());
  for (const auto& p : params) current.push_back(p.detach().clone());
  const auto snapshot = point<SVRGParamState>([](const SVRGParamState& st) { return st.snapshot(); });
  const auto g_snap = grads_at(&snapshot, batch);
  torch::Tensor loss;
  const auto g_cur = grads_at(&current, batch, &loss);
  evaluations_ += 2 * d.b();
  const auto group = param_group_indices();
  for (const auto k : c10::irange(params.size())) {
    const auto& o = options_of<SVRGOptions>(group[k]);
    auto p = params[k].detach();
    p.sub_(g_cur[k] - g_snap[k] + state_of<SVRGParamState>(params[k]).full_grad(), o.lr());
    elastic_net_prox_(p, o.lr(), o.l1(), o.l2());
  }
  finish_inner_step(params);
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
  load_state<SVRGParamState, SVRGOptions>(archive);
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

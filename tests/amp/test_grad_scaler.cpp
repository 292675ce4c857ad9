#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "optim/optimizer_bytes.h"
#include "sgdx/amp/grad_scaler.h"
#include "sgdx/optim/accelerated_vr.h"
#include "sgdx/optim/amp_step.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"
#include "test_util.h"

using sgdx::amp::GradScaler;
using sgdx::amp::GradScalerOptions;
using torch::optim::Optimizer;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// A float32 two-layer classifier as plain tensors; equal seeds give equal copies.
struct Net {
  std::vector<at::Tensor> params;  // w1 [8, 6], b1 [8], w2 [3, 8], b2 [3]
  Net(uint64_t seed, const torch::Device& device) {
    torch::manual_seed(seed);
    for (auto shape : std::vector<std::vector<int64_t>>{{8, 6}, {8}, {3, 8}, {3}})
      params.push_back((0.5 * torch::randn(shape)).to(device).requires_grad_());
  }
  at::Tensor loss(const std::pair<at::Tensor, at::Tensor>& batch) const {
    auto h = torch::tanh(batch.first.mm(params[0].t()) + params[1]);
    return torch::nn::functional::cross_entropy(h.mm(params[2].t()) + params[3], batch.second);
  }
  std::vector<at::Tensor> snapshot() const {
    std::vector<at::Tensor> out;
    for (const auto& p : params) out.push_back(p.detach().clone());
    return out;
  }
};

using Batch = std::pair<at::Tensor, at::Tensor>;

std::vector<Batch> make_batches(int count, const torch::Device& device) {
  torch::manual_seed(100);
  std::vector<Batch> out;
  for (int k = 0; k < count; ++k)
    out.emplace_back(torch::randn({16, 6}).to(device), torch::randint(0, 3, {16}, torch::kLong).to(device));
  return out;
}

std::string bytes_of(const Optimizer& opt) {
  return sgdx::testing::optimizer_bytes(opt);
}

bool amp_aware(Optimizer& opt) {
  return dynamic_cast<sgdx::optim::AmpScaledStep*>(&opt) != nullptr;
}

// How an iteration hands its work to the scaler.
struct StepMode {
  bool unscale_first = false;  ///< unscale_() before step(): step_scaled gets no grad_scale
  bool loss_closure = false;   ///< GradQueue: the loss reaches the step through a closure
  bool observe_loss = false;   ///< GradQueue: the loss reaches the step through observe_loss
  std::string name() const {
    return std::string(unscale_first ? "unscale_ first" : "no unscale_") + (loss_closure   ? ", loss closure"
                                                                            : observe_loss ? ", observe_loss"
                                                                                           : "");
  }
};

void pass_loss(Optimizer& opt, const at::Tensor& loss, StepMode mode) {
  if (mode.observe_loss) dynamic_cast<sgdx::optim::GradQueueSGDM&>(opt).observe_loss(loss.item<double>());
}

// One iteration of the usual loop; `bad` is written into one gradient element after backward.
at::Tensor scaled_iteration(Net& net, Optimizer& opt, GradScaler& scaler, const Batch& batch, StepMode mode,
                            std::optional<float> bad = std::nullopt) {
  opt.zero_grad();
  auto loss = net.loss(batch);
  scaler.scale(loss).backward();
  if (bad) net.params[2].grad().view(-1)[5].fill_(*bad);
  if (mode.unscale_first) scaler.unscale_(opt);
  pass_loss(opt, loss, mode);
  auto out = mode.loss_closure ? scaler.step(opt, [l = loss.detach()] { return l; }) : scaler.step(opt);
  scaler.update();
  return out;
}

void plain_iteration(Net& net, Optimizer& opt, const Batch& batch, StepMode mode) {
  opt.zero_grad();
  auto loss = net.loss(batch);
  loss.backward();
  pass_loss(opt, loss, mode);
  if (mode.loss_closure) {
    opt.step([l = loss.detach()] { return l; });
  } else {
    opt.step();
  }
}

using MakeOpt = std::function<std::unique_ptr<Optimizer>(const std::vector<at::Tensor>&)>;

// A step whose gradients hold an inf or a nan changes nothing, bit for bit (parameters
// and the serialized optimizer), and the run goes on exactly as a run that never saw
// that batch. Power-of-two scales make the two runs' unscaled gradients equal although
// their scales differ after the backoff.
void expect_invisible_skip(const MakeOpt& make, StepMode mode, const torch::Device& device = torch::kCPU,
                           const std::function<void(Optimizer&, const Net&)>& precondition = nullptr) {
  const auto batches = make_batches(24, device);
  const int bad_at = 12;
  for (float bad : {kInf, kNaN}) {
    SCOPED_TRACE(mode.name() + (std::isnan(bad) ? ", nan" : ", inf"));
    Net a(1, device), b(1, device);
    auto oa = make(a.params), ob = make(b.params);
    GradScaler sa, sb;
    for (int k = 0; k < bad_at; ++k) {
      scaled_iteration(a, *oa, sa, batches[k], mode);
      scaled_iteration(b, *ob, sb, batches[k], mode);
    }
    if (precondition) precondition(*oa, a);
    const auto params_before = a.snapshot();
    const auto state_before = bytes_of(*oa);
    ASSERT_TRUE(state_before == bytes_of(*oa)) << "the serialized state is not deterministic";
    const double scale_before = sa.get_scale();
    auto out = scaled_iteration(a, *oa, sa, batches[bad_at], mode, bad);
    if (!amp_aware(*oa)) EXPECT_FALSE(out.defined()) << "a skipped step returns no loss";
    for (size_t i = 0; i < a.params.size(); ++i)
      EXPECT_TRUE(torch::equal(a.params[i], params_before[i])) << "parameter " << i << " changed";
    EXPECT_TRUE(bytes_of(*oa) == state_before) << "the optimizer's serialized state changed";
    EXPECT_EQ(sa.get_scale(), scale_before * 0.5);
    EXPECT_EQ(sa.get_growth_tracker(), 0);
    for (int k = bad_at + 1; k < static_cast<int>(batches.size()); ++k) {
      scaled_iteration(a, *oa, sa, batches[k], mode);
      scaled_iteration(b, *ob, sb, batches[k], mode);
      for (size_t i = 0; i < a.params.size(); ++i)
        ASSERT_TRUE(torch::equal(a.params[i], b.params[i])) << "step " << k << ", parameter " << i;
    }
  }
}

// Clean steps under a scaler equal unscaled steps: bit for bit with a power-of-two
// scale (scaling and unscaling are exact), to float32 rounding with S = 3000 (each
// gradient carries one rounding of the reciprocal multiply): rtol 1e-5 and atol 1e-6
// after 16 steps (GradQueue: atol 1e-5, as its Delta-rho divides by the window's
// standard deviation and so amplifies those roundings; 3.2e-6 seen).
void expect_scaled_equals_unscaled(const MakeOpt& make, StepMode mode, double atol = 1e-6,
                                   const torch::Device& device = torch::kCPU) {
  const auto batches = make_batches(16, device);
  for (double init_scale : {65536.0, 3000.0}) {
    SCOPED_TRACE(mode.name() + ", S = " + std::to_string(init_scale));
    Net a(2, device), b(2, device);
    auto oa = make(a.params), ob = make(b.params);
    GradScaler scaler(GradScalerOptions().init_scale(init_scale));
    for (const auto& batch : batches) {
      scaled_iteration(a, *oa, scaler, batch, mode);
      plain_iteration(b, *ob, batch, mode);
    }
    EXPECT_EQ(scaler.get_scale(), static_cast<double>(static_cast<float>(init_scale)));
    for (size_t i = 0; i < a.params.size(); ++i) {
      if (init_scale == 65536.0) {
        EXPECT_TRUE(torch::equal(a.params[i], b.params[i])) << "parameter " << i;
      } else {
        EXPECT_TRUE(torch::allclose(a.params[i], b.params[i], 1e-5, atol))
            << "parameter " << i << " max diff " << (a.params[i] - b.params[i]).abs().max().item<float>();
      }
    }
  }
}

MakeOpt make_sgdm() {
  return [](const std::vector<at::Tensor>& p) {
    return std::make_unique<torch::optim::SGD>(p, torch::optim::SGDOptions(0.1).momentum(0.9));
  };
}
MakeOpt make_adam() {
  return [](const std::vector<at::Tensor>& p) {
    return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-2));
  };
}
MakeOpt make_rsgd() {
  return [](const std::vector<at::Tensor>& p) {
    return std::make_unique<sgdx::optim::RSGD>(p, sgdx::optim::RSGDOptions(0.05).gamma(0.9).seed(3));
  };
}
MakeOpt make_gq(sgdx::optim::GradQueueStorage storage) {
  return [storage](const std::vector<at::Tensor>& p) {
    return std::make_unique<sgdx::optim::GradQueueSGDM>(
        p, sgdx::optim::GradQueueSGDMOptions(0.05).q_min(2).q_init(3).q_max(5).storage(storage));
  };
}

// The GradQueue skip is only meaningful once the window is full and Delta-rho is active.
void gq_window_full(Optimizer& opt, const Net& net) {
  for (const auto& p : net.params) {
    const auto& st =
        static_cast<const sgdx::optim::GradQueueSGDMParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
    const auto& o = static_cast<const sgdx::optim::GradQueueSGDMOptions&>(opt.defaults());
    ASSERT_GE(st.count(), o.q_min()) << "Delta-rho is not active yet";
    ASSERT_EQ(st.count(), st.window()) << "the window is not full yet";
  }
}

const std::vector<StepMode> kModes = {{false}, {true}};

}  // namespace

// ---------------------------------------------------------------- options and closed forms

TEST(GradScaler, DefaultsAreTorchAmpGradScalers) {
  GradScalerOptions o;
  EXPECT_EQ(o.init_scale(), 65536.0);
  EXPECT_EQ(o.growth_factor(), 2.0);
  EXPECT_EQ(o.backoff_factor(), 0.5);
  EXPECT_EQ(o.growth_interval(), 2000);
  EXPECT_TRUE(o.enabled());
  GradScaler s;
  EXPECT_EQ(s.get_scale(), 65536.0);
  EXPECT_EQ(s.get_growth_tracker(), 0);
}

TEST(GradScaler, OptionErrorsNameTheValue) {
  SGDX_EXPECT_THROW_MSG(GradScaler(GradScalerOptions().init_scale(0)),
                        "init_scale must be finite and > 0, got 0");
  SGDX_EXPECT_THROW_MSG(GradScaler(GradScalerOptions().init_scale(kInf)),
                        "init_scale must be finite and > 0, got inf");
  SGDX_EXPECT_THROW_MSG(GradScaler(GradScalerOptions().growth_factor(1)), "growth_factor must be > 1, got 1");
  SGDX_EXPECT_THROW_MSG(GradScaler(GradScalerOptions().backoff_factor(1)),
                        "backoff_factor must be in (0, 1), got 1");
  SGDX_EXPECT_THROW_MSG(GradScaler(GradScalerOptions().backoff_factor(0)),
                        "backoff_factor must be in (0, 1), got 0");
  SGDX_EXPECT_THROW_MSG(GradScaler(GradScalerOptions().growth_interval(0)),
                        "growth_interval must be in [1, 2^31 - 1], got 0");
}

TEST(GradScaler, ScaleMultipliesByAFloat32ScaleCreatedOnFirstUse) {
  GradScaler s(GradScalerOptions().init_scale(3.0));
  auto loss = torch::tensor(0.1f);
  auto scaled = s.scale(loss);
  EXPECT_EQ(scaled.scalar_type(), torch::kFloat);
  EXPECT_EQ(scaled.item<float>(), 0.1f * 3.0f);
  auto loss64 = torch::tensor(0.1, torch::kDouble);  // a float32 scale does not round a float64 loss
  EXPECT_EQ(s.scale(loss64).item<double>(), 0.1 * 3.0);
  SGDX_EXPECT_THROW_MSG(s.scale(at::Tensor()), "the loss is undefined");
}

// unscale_ multiplies by the float32 rounding of 1/S (computed in float64), as PyTorch;
// per dtype: float32 and bfloat16 compute in float32, float64 in float64.
TEST(GradScaler, UnscaleIsTheFloat32ReciprocalMultiply) {
  auto w = torch::zeros({5, 7}, torch::requires_grad());
  auto d = torch::zeros({9}, torch::TensorOptions().dtype(torch::kDouble).requires_grad(true));
  auto h = torch::zeros({4}, torch::TensorOptions().dtype(torch::kBFloat16).requires_grad(true));
  torch::optim::SGD opt({w, d, h}, torch::optim::SGDOptions(0.1));
  GradScaler s(GradScalerOptions().init_scale(3.0));
  s.scale(torch::tensor(1.0f));
  torch::manual_seed(4);
  w.mutable_grad() = torch::randn({5, 7}) * 1000;
  d.mutable_grad() = torch::randn({9}, torch::kDouble) * 1000;
  h.mutable_grad() = (torch::randn({4}) * 1000).to(torch::kBFloat16);
  const auto gw = w.grad().clone(), gd = d.grad().clone(), gh = h.grad().clone();
  s.unscale_(opt);
  const float inv = static_cast<float>(1.0 / 3.0);
  EXPECT_TRUE(torch::equal(w.grad(), gw * torch::tensor(inv)));
  EXPECT_TRUE(torch::equal(d.grad(), gd * static_cast<double>(inv)));
  EXPECT_TRUE(torch::equal(h.grad(), (gh.to(torch::kFloat) * torch::tensor(inv)).to(torch::kBFloat16)));
  EXPECT_FALSE(torch::equal(w.grad(), gw / 3.0f)) << "this draw does not tell the two roundings apart";
}

// S after each iteration against the rule, run independently in float64: backoff on inf/nan
// (tracker reset), growth after growth_interval clean iterations (tracker reset).
TEST(GradScaler, ScaleFollowsGrowthAndBackoff) {
  auto w = torch::ones({4}, torch::requires_grad());
  torch::optim::SGD opt({w}, torch::optim::SGDOptions(0.1));
  GradScaler s(
      GradScalerOptions().init_scale(4.0).growth_interval(3).growth_factor(4.0).backoff_factor(0.25));
  const std::vector<int> bad_at = {4, 5, 11};
  double ref_scale = 4.0;
  int64_t ref_tracker = 0;
  for (int k = 0; k < 16; ++k) {
    const bool bad = std::count(bad_at.begin(), bad_at.end(), k) > 0;
    opt.zero_grad();
    s.scale((w * w).sum()).backward();
    if (bad) w.grad()[k % 4].fill_(k % 2 ? kNaN : kInf);
    const auto before = w.detach().clone();
    s.step(opt);
    s.update();
    if (bad) {
      ref_scale *= 0.25;
      ref_tracker = 0;
      EXPECT_TRUE(torch::equal(w, before)) << "iteration " << k;
    } else if (++ref_tracker == 3) {
      ref_scale *= 4.0;
      ref_tracker = 0;
    }
    ASSERT_EQ(s.get_scale(), ref_scale) << "iteration " << k;
    ASSERT_EQ(s.get_growth_tracker(), ref_tracker) << "iteration " << k;
  }
}

// Growth that would overflow float32 keeps S (and resets the tracker); update(new_scale) sets S.
TEST(GradScaler, GrowthStopsBelowInfinityAndUpdateCanSetTheScale) {
  auto w = torch::ones({2}, torch::requires_grad());
  torch::optim::SGD opt({w}, torch::optim::SGDOptions(0.0));
  const double big = std::ldexp(1.0, 127);
  GradScaler s(GradScalerOptions().init_scale(big).growth_interval(1));
  opt.zero_grad();
  s.scale(w.sum() * 1e-30).backward();
  s.step(opt);
  s.update();
  EXPECT_EQ(s.get_scale(), big);
  EXPECT_EQ(s.get_growth_tracker(), 0);
  s.update(1024.0);
  EXPECT_EQ(s.get_scale(), 1024.0);
  SGDX_EXPECT_THROW_MSG(s.update(-1.0), "new_scale must be finite and > 0, got -1");
}

TEST(GradScaler, OrderErrorsAsInPyTorch) {
  auto w = torch::ones({3}, torch::requires_grad());
  torch::optim::SGD opt({w}, torch::optim::SGDOptions(0.1));
  GradScaler s;
  SGDX_EXPECT_THROW_MSG(s.step(opt), "there is no scale yet; call scale(loss)");
  SGDX_EXPECT_THROW_MSG(s.unscale_(opt), "there is no scale yet");
  SGDX_EXPECT_THROW_MSG(s.update(), "there is no scale yet");
  s.scale(w.sum()).backward();
  SGDX_EXPECT_THROW_MSG(s.update(),
                        "no inf checks were recorded; call step() (or unscale_()) before update()");
  s.unscale_(opt);
  SGDX_EXPECT_THROW_MSG(s.unscale_(opt),
                        "unscale_() has already been called on this optimizer since the last update()");
  s.step(opt);
  SGDX_EXPECT_THROW_MSG(s.step(opt), "step() has already been called since the last update()");
  SGDX_EXPECT_THROW_MSG(s.unscale_(opt), "unscale_() is being called after step()");
  s.update();
  opt.zero_grad();
  s.scale(w.sum()).backward();
  s.unscale_(opt);  // a new iteration after update()
  SGDX_EXPECT_THROW_MSG(s.step(opt, [] { return torch::zeros({}); }),
                        "a closure needs an optimizer that implements sgdx::optim::AmpScaledStep");
  torch::optim::SGD empty({torch::ones({2}, torch::requires_grad())}, torch::optim::SGDOptions(0.1));
  SGDX_EXPECT_THROW_MSG(s.step(empty), "the optimizer has no gradients: no inf checks were recorded");
}

TEST(GradScaler, RefusesSparseIntegerAndFloat16GradientsByName) {
  GradScaler s;
  s.scale(torch::tensor(1.0f));
  torch::nn::Embedding emb(torch::nn::EmbeddingOptions(10, 3).sparse(true));
  torch::optim::SGD sparse_opt(emb->parameters(), torch::optim::SGDOptions(0.1));
  emb->forward(torch::tensor({1, 2}, torch::kLong)).sum().backward();
  ASSERT_TRUE(emb->weight.grad().is_sparse());
  SGDX_EXPECT_THROW_MSG(s.unscale_(sparse_opt),
                        "parameter 0 of group 0 has a sparse gradient (layout Sparse)");

  auto a = torch::ones({2}, torch::requires_grad()), b = torch::ones({2}, torch::requires_grad());
  torch::optim::SGD int_opt({a, b}, torch::optim::SGDOptions(0.1));
  a.mutable_grad() = torch::ones({2});
  b.mutable_grad() = torch::ones({2}, torch::kLong);
  SGDX_EXPECT_THROW_MSG(s.unscale_(int_opt), "parameter 1 of group 0 has a Long gradient");

  auto h = torch::ones({2}, torch::TensorOptions().dtype(torch::kHalf).requires_grad(true));
  torch::optim::SGD half_opt({h}, torch::optim::SGDOptions(0.1));
  h.mutable_grad() = torch::ones({2}, torch::kHalf);
  SGDX_EXPECT_THROW_MSG(s.unscale_(half_opt),
                        "parameter 0 of group 0 has a float16 gradient; keep the parameters in float32");
}

TEST(GradScaler, DisabledPassesThrough) {
  auto w = torch::ones({3}, torch::requires_grad());
  torch::optim::SGD opt({w}, torch::optim::SGDOptions(0.5));
  GradScaler s(GradScalerOptions().enabled(false));
  auto loss = (w * w).sum();
  auto scaled = s.scale(loss);
  EXPECT_TRUE(scaled.is_same(loss));
  scaled.backward();
  s.unscale_(opt);
  s.unscale_(opt);  // nothing to refuse: nothing happens
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({3}, 2.0f)));
  s.step(opt);
  s.update();
  EXPECT_TRUE(torch::equal(w, torch::zeros({3})));
  EXPECT_EQ(s.get_scale(), 1.0);
}

// Each optimizer steps on its own flags; update() backs off once for all of them.
TEST(GradScaler, SeveralOptimizersShareOneScale) {
  auto u = torch::ones({3}, torch::requires_grad()), v = torch::ones({3}, torch::requires_grad());
  torch::optim::SGD ou({u}, torch::optim::SGDOptions(0.5)), ov({v}, torch::optim::SGDOptions(0.5));
  GradScaler s;
  s.scale((u * u).sum() + (v * v).sum()).backward();
  v.grad()[1].fill_(kInf);
  s.step(ou);
  s.step(ov);
  s.update();
  EXPECT_TRUE(torch::equal(u, torch::zeros({3})));
  EXPECT_TRUE(torch::equal(v, torch::ones({3})));
  EXPECT_EQ(s.get_scale(), 32768.0);
}

// save/load: S, the tracker and the options; a loaded scaler continues identically.
TEST(GradScaler, SaveLoadContinuesIdentically) {
  const auto batches = make_batches(30, torch::kCPU);
  const auto opts =
      GradScalerOptions().init_scale(256.0).growth_interval(4).growth_factor(4.0).backoff_factor(0.125);
  Net a(5, torch::kCPU);
  auto oa = make_sgdm()(a.params);
  GradScaler sa(opts);
  for (int k = 0; k < 10; ++k)
    scaled_iteration(a, *oa, sa, batches[k], {}, k == 3 ? std::optional(kInf) : std::nullopt);
  ASSERT_EQ(sa.get_scale(), 256.0 * 0.125 * 4.0);  // backoff at 3, growth after 4..7
  ASSERT_EQ(sa.get_growth_tracker(), 2);
  std::ostringstream buf;
  {
    torch::serialize::OutputArchive ar;
    sa.save(ar);
    oa->save(ar);
    ar.save_to(buf);
  }
  Net b(6, torch::kCPU);
  for (size_t i = 0; i < a.params.size(); ++i) {
    torch::NoGradGuard ng;
    b.params[i].copy_(a.params[i]);
  }
  auto ob = make_sgdm()(b.params);
  GradScaler fresh;  // S created from the loaded value on the next scale()
  GradScaler existing(GradScalerOptions().init_scale(2.0));
  existing.scale(torch::tensor(1.0f));  // S exists: the loaded value is copied into it
  for (auto* s : {&fresh, &existing}) {
    std::istringstream in(buf.str());
    torch::serialize::InputArchive ar;
    ar.load_from(in);
    s->load(ar);
    EXPECT_TRUE(s->options() == opts);
    EXPECT_EQ(s->get_scale(), sa.get_scale());
    EXPECT_EQ(s->get_growth_tracker(), sa.get_growth_tracker());
  }
  {
    std::istringstream in(buf.str());
    torch::serialize::InputArchive ar;
    ar.load_from(in);
    ob->load(ar);
  }
  Net c(6, torch::kCPU);
  for (size_t i = 0; i < a.params.size(); ++i) {
    torch::NoGradGuard ng;
    c.params[i].copy_(a.params[i]);
  }
  auto oc = make_sgdm()(c.params);
  {
    std::istringstream in(buf.str());
    torch::serialize::InputArchive ar;
    ar.load_from(in);
    oc->load(ar);
  }
  for (int k = 10; k < 30; ++k) {
    const auto bad = k % 7 == 0 ? std::optional(kNaN) : std::nullopt;
    scaled_iteration(a, *oa, sa, batches[k], {}, bad);
    scaled_iteration(b, *ob, fresh, batches[k], {}, bad);
    scaled_iteration(c, *oc, existing, batches[k], {}, bad);
    ASSERT_EQ(fresh.get_scale(), sa.get_scale()) << "step " << k;
    ASSERT_EQ(existing.get_scale(), sa.get_scale()) << "step " << k;
    ASSERT_EQ(fresh.get_growth_tracker(), sa.get_growth_tracker()) << "step " << k;
    for (size_t i = 0; i < a.params.size(); ++i) {
      ASSERT_TRUE(torch::equal(a.params[i], b.params[i])) << "step " << k << ", parameter " << i;
      ASSERT_TRUE(torch::equal(a.params[i], c.params[i])) << "step " << k << ", parameter " << i;
    }
  }
  GradScaler disabled(GradScalerOptions().enabled(false));
  std::istringstream in(buf.str());
  torch::serialize::InputArchive ar;
  ar.load_from(in);
  disabled.load(ar);
  EXPECT_FALSE(disabled.is_enabled()) << "enabled is the run's choice, not the checkpoint's";
}

// ---------------------------------------------------------------- the AmpScaledStep dispatch

namespace {
// Records what the scaler hands to an AmpScaledStep optimizer.
class Probe : public Optimizer, public sgdx::optim::AmpScaledStep {
 public:
  explicit Probe(std::vector<at::Tensor> params)
      : Optimizer(std::move(params), std::make_unique<torch::optim::SGDOptions>(0.1)) {}
  at::Tensor step(LossClosure closure) override {
    ++plain_steps;
    return closure ? closure() : at::Tensor();
  }
  at::Tensor step_scaled(const at::Tensor& scale, const at::Tensor& found, LossClosure closure) override {
    ++scaled_steps;
    grad_scale = scale.defined() ? scale.clone() : at::Tensor();
    found_inf = found.clone();
    grads.clear();
    for (auto& p : param_groups()[0].params())
      grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());
    return closure ? closure() : at::Tensor();
  }
  int plain_steps = 0, scaled_steps = 0;
  at::Tensor grad_scale, found_inf;
  std::vector<at::Tensor> grads;
};
}  // namespace

TEST(GradScaler, AmpOptimizerGetsTheScaleAndTheFlagWithoutUnscaling) {
  auto w = torch::ones({4}, torch::requires_grad());
  auto h = torch::ones({2}, torch::TensorOptions().dtype(torch::kHalf).requires_grad(true));
  Probe opt({w, h});
  GradScaler s;
  s.scale((w * w).sum()).backward();
  h.mutable_grad() = torch::full({2}, 8.0, torch::kHalf);  // float16 is only checked here, never unscaled
  const auto scaled_grad = w.grad().clone();
  auto out = s.step(opt, [] { return torch::tensor(7.0f); });
  EXPECT_EQ(out.item<float>(), 7.0f) << "the closure's loss is returned";
  ASSERT_EQ(opt.scaled_steps, 1);
  EXPECT_EQ(opt.plain_steps, 0);
  ASSERT_TRUE(opt.grad_scale.defined());
  EXPECT_EQ(opt.grad_scale.scalar_type(), torch::kFloat);
  EXPECT_EQ(opt.grad_scale.item<float>(), 65536.0f);
  EXPECT_EQ(opt.found_inf.item<float>(), 0.0f);
  EXPECT_TRUE(torch::equal(opt.grads[0], scaled_grad)) << "the check must not change the gradients";
  EXPECT_TRUE(torch::equal(opt.grads[1], torch::full({2}, 8.0, torch::kHalf)));
  s.update();
  EXPECT_EQ(s.get_growth_tracker(), 1);

  opt.zero_grad();
  s.scale((w * w).sum()).backward();
  w.grad()[2].fill_(kNaN);
  s.step(opt);
  EXPECT_NE(opt.found_inf.item<float>(), 0.0f);
  EXPECT_TRUE(std::isnan(opt.grads[0][2].item<float>()));
  EXPECT_EQ(opt.grads[0][0].item<float>(), 2.0f * 65536.0f) << "still scaled: the optimizer skips";
  s.update();
  EXPECT_EQ(s.get_scale(), 32768.0);
}

TEST(GradScaler, AmpOptimizerAfterUnscaleGetsNoScale) {
  auto w = torch::ones({4}, torch::requires_grad());
  Probe opt({w});
  GradScaler s;
  s.scale((w * w).sum()).backward();
  s.unscale_(opt);
  s.step(opt);
  EXPECT_FALSE(opt.grad_scale.defined());
  EXPECT_EQ(opt.found_inf.item<float>(), 0.0f);
  EXPECT_TRUE(torch::equal(opt.grads[0], torch::full({4}, 2.0f)));
  s.update();
  EXPECT_EQ(s.get_growth_tracker(), 1);
}

// A closure-driven optimizer may have no gradient before its step: nothing is found, update() works.
TEST(GradScaler, AmpOptimizerWithoutGradientsSteps) {
  auto w = torch::ones({4}, torch::requires_grad());
  Probe opt({w});
  GradScaler s;
  s.scale(torch::tensor(1.0f));
  s.step(opt, [] { return torch::tensor(1.0f); });
  EXPECT_EQ(opt.scaled_steps, 1);
  EXPECT_EQ(opt.found_inf.item<float>(), 0.0f);
  s.update();
  EXPECT_EQ(s.get_growth_tracker(), 1);
}

// ---------------------------------------------------------------- skipped steps change nothing

TEST(GradScalerSkip, TorchSgdMomentum) {
  for (auto mode : kModes) expect_invisible_skip(make_sgdm(), mode);
}

TEST(GradScalerSkip, TorchAdam) {
  for (auto mode : kModes) expect_invisible_skip(make_adam(), mode);
}

TEST(GradScalerSkip, RSGD) {
  ASSERT_TRUE(amp_aware(*make_rsgd()({torch::ones({1}, torch::requires_grad())})))
      << "RSGD is not an AmpScaledStep";
  for (auto mode : kModes) expect_invisible_skip(make_rsgd(), mode);
}

TEST(GradScalerSkip, GradQueueExactAndEma) {
  using sgdx::optim::GradQueueStorage;
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    SCOPED_TRACE(storage == GradQueueStorage::exact ? "exact" : "ema");
    ASSERT_TRUE(amp_aware(*make_gq(storage)({torch::ones({1}, torch::requires_grad())})))
        << "GradQueueSGDM is not an AmpScaledStep";
    for (bool unscale_first : {false, true}) {
      for (auto loss_via : {0, 1, 2}) {  // no loss, observe_loss, closure
        StepMode mode{unscale_first, loss_via == 2, loss_via == 1};
        expect_invisible_skip(make_gq(storage), mode, torch::kCPU, gq_window_full);
      }
    }
  }
}

// ---------------------------------------------------------------- clean scaled steps equal unscaled ones

TEST(GradScalerEquivalence, TorchSgdMomentumAndAdam) {
  for (auto mode : kModes) {
    expect_scaled_equals_unscaled(make_sgdm(), mode);
    expect_scaled_equals_unscaled(make_adam(), mode);
  }
}

TEST(GradScalerEquivalence, RSGD) {
  for (auto mode : kModes) expect_scaled_equals_unscaled(make_rsgd(), mode);
}

TEST(GradScalerEquivalence, GradQueueExactAndEma) {
  using sgdx::optim::GradQueueStorage;
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    SCOPED_TRACE(storage == GradQueueStorage::exact ? "exact" : "ema");
    for (auto mode : kModes) {
      expect_scaled_equals_unscaled(make_gq(storage), mode, 1e-5);
      mode.loss_closure = true;
      expect_scaled_equals_unscaled(make_gq(storage), mode, 1e-5);
    }
  }
}

// ---------------------------------------------------------------- closure-driven variance-reduced methods

namespace {
// Logistic regression in float32 on unit-norm rows.
struct Logistic32 {
  at::Tensor a, y;
  Logistic32(int64_t n, int64_t d) {
    torch::manual_seed(7);
    a = torch::randn({n, d});
    a = a / a.norm(2, {1}, true);
    y = torch::where(a.mv(torch::randn({d})) + 0.3 * torch::randn({n}) >= 0, 1.0f, -1.0f);
  }
  at::Tensor loss(const at::Tensor& w, const at::Tensor& idx) const {
    return torch::nn::functional::softplus(-y.index_select(0, idx) * a.index_select(0, idx).mv(w)).mean();
  }
  int64_t n() const { return a.size(0); }
};

constexpr int64_t kVrN = 40, kVrB = 4;

std::vector<at::Tensor> vr_batches(int count) {
  torch::manual_seed(200);
  std::vector<at::Tensor> out;
  for (int k = 0; k < count; ++k) out.push_back(torch::randint(0, kVrN, {kVrB}, torch::kLong));
  return out;
}

// One scaled step: the scaler checks the batch's gradient at the current point (where an
// inf/nan is injected), the optimizer evaluates the scaled closures where it needs them
// and divides what they compute by S. The full-gradient closure scales its loss too: in
// float16 its backward underflows like the minibatch's, so the optimizer divides both.
template <typename Opt>
void scaled_vr_iteration(Opt& opt, const Logistic32& prob, at::Tensor& w, GradScaler& scaler,
                         const at::Tensor& idx, std::optional<float> bad = std::nullopt) {
  opt.set_full_gradient_closure([&] {
    auto l = prob.loss(w, torch::arange(prob.n()));
    scaler.scale(l).backward();
    return l;
  });
  auto batch = [&] {
    auto l = prob.loss(w, idx);
    scaler.scale(l).backward();
    return l;
  };
  w.mutable_grad().reset();
  batch();
  if (bad) w.grad()[1].fill_(*bad);
  scaler.step(opt, batch);
  scaler.update();
}

template <typename Opt>
void plain_vr_iteration(Opt& opt, const Logistic32& prob, at::Tensor& w, const at::Tensor& idx) {
  opt.set_full_gradient_closure([&] {
    auto l = prob.loss(w, torch::arange(prob.n()));
    l.backward();
    return l;
  });
  opt.step([&] {
    auto l = prob.loss(w, idx);
    l.backward();
    return l;
  });
}

// As expect_invisible_skip, for closure-driven optimizers: a bad step at a stage start
// (no full-gradient pass may happen) and one mid-stage (m = 3).
template <typename Opt>
void expect_invisible_vr_skip(const std::function<std::unique_ptr<Opt>(const at::Tensor&)>& make) {
  Logistic32 prob(kVrN, 5);
  const auto batches = vr_batches(16);
  for (int bad_at : {3, 7}) {
    for (float bad : {kInf, kNaN}) {
      SCOPED_TRACE("bad step " + std::to_string(bad_at) + (std::isnan(bad) ? ", nan" : ", inf"));
      auto wa = torch::zeros({5}, torch::requires_grad()), wb = torch::zeros({5}, torch::requires_grad());
      auto oa = make(wa), ob = make(wb);
      ASSERT_TRUE(amp_aware(*oa)) << "this optimizer is not an AmpScaledStep";
      GradScaler sa, sb;
      for (int k = 0; k < bad_at; ++k) {
        scaled_vr_iteration(*oa, prob, wa, sa, batches[k]);
        scaled_vr_iteration(*ob, prob, wb, sb, batches[k]);
      }
      const auto w_before = wa.detach().clone();
      const auto state_before = bytes_of(*oa);
      const auto evaluations = oa->gradient_evaluations();
      scaled_vr_iteration(*oa, prob, wa, sa, batches[bad_at], bad);
      EXPECT_TRUE(torch::equal(wa, w_before));
      EXPECT_TRUE(bytes_of(*oa) == state_before) << "the optimizer's serialized state changed";
      EXPECT_EQ(oa->gradient_evaluations(), evaluations) << "a skipped step evaluates nothing";
      EXPECT_EQ(sa.get_scale(), 32768.0);
      for (int k = bad_at + 1; k < static_cast<int>(batches.size()); ++k) {
        scaled_vr_iteration(*oa, prob, wa, sa, batches[k]);
        scaled_vr_iteration(*ob, prob, wb, sb, batches[k]);
        ASSERT_TRUE(torch::equal(wa, wb)) << "step " << k << "\n" << wa << wb;
      }
    }
  }
}

// As expect_scaled_equals_unscaled (same tolerances), for closure-driven optimizers.
template <typename Opt>
void expect_vr_scaled_equals_unscaled(const std::function<std::unique_ptr<Opt>(const at::Tensor&)>& make) {
  Logistic32 prob(kVrN, 5);
  const auto batches = vr_batches(16);
  for (double init_scale : {65536.0, 3000.0}) {
    SCOPED_TRACE("S = " + std::to_string(init_scale));
    auto wa = torch::zeros({5}, torch::requires_grad()), wb = torch::zeros({5}, torch::requires_grad());
    auto oa = make(wa), ob = make(wb);
    GradScaler scaler(GradScalerOptions().init_scale(init_scale));
    for (const auto& idx : batches) {
      scaled_vr_iteration(*oa, prob, wa, scaler, idx);
      plain_vr_iteration(*ob, prob, wb, idx);
    }
    EXPECT_GT(wa.abs().sum().item<float>(), 0.0f) << "nothing moved";
    if (init_scale == 65536.0) {
      EXPECT_TRUE(torch::equal(wa, wb)) << wa << wb;
    } else {
      EXPECT_TRUE(torch::allclose(wa, wb, 1e-5, 1e-6)) << wa << wb;
    }
  }
}

std::unique_ptr<sgdx::optim::SVRG> make_svrg(const at::Tensor& w) {
  return std::make_unique<sgdx::optim::SVRG>(std::vector<at::Tensor>{w},
                                             sgdx::optim::SVRGOptions(0.5)
                                                 .n(kVrN)
                                                 .b(kVrB)
                                                 .m(3)
                                                 .l2(1e-3)
                                                 .snapshot(sgdx::optim::SnapshotRule::random)
                                                 .seed(2));
}
std::unique_ptr<sgdx::optim::Katyusha> make_katyusha(const at::Tensor& w) {
  return std::make_unique<sgdx::optim::Katyusha>(
      std::vector<at::Tensor>{w}, sgdx::optim::KatyushaOptions(0.25).n(kVrN).b(kVrB).m(3).l2(1e-2));
}
std::unique_ptr<sgdx::optim::DASVRDA> make_dasvrda(const at::Tensor& w) {
  return std::make_unique<sgdx::optim::DASVRDA>(
      std::vector<at::Tensor>{w}, sgdx::optim::DASVRDAOptions(0.25).n(kVrN).b(kVrB).m(3).l2(1e-2));
}
}  // namespace

TEST(GradScalerSkip, SVRG) {
  expect_invisible_vr_skip<sgdx::optim::SVRG>(make_svrg);
}
TEST(GradScalerSkip, Katyusha) {
  expect_invisible_vr_skip<sgdx::optim::Katyusha>(make_katyusha);
}
TEST(GradScalerSkip, DASVRDA) {
  expect_invisible_vr_skip<sgdx::optim::DASVRDA>(make_dasvrda);
}

TEST(GradScalerEquivalence, SVRG) {
  expect_vr_scaled_equals_unscaled<sgdx::optim::SVRG>(make_svrg);
}
TEST(GradScalerEquivalence, Katyusha) {
  expect_vr_scaled_equals_unscaled<sgdx::optim::Katyusha>(make_katyusha);
}
TEST(GradScalerEquivalence, DASVRDA) {
  expect_vr_scaled_equals_unscaled<sgdx::optim::DASVRDA>(make_dasvrda);
}

// An overflow that appears only inside the step's closures (nothing in .grad when step()
// is called) skips the step all the same: the closure's gradients are checked as they are
// unscaled; the closure-driven optimizers restore their snapshot. The scale backs off.
namespace {
template <typename Opt>
void expect_closure_overflow_skips(const std::function<std::unique_ptr<Opt>(const at::Tensor&)>& make) {
  Logistic32 prob(kVrN, 5);
  const auto batches = vr_batches(6);
  auto w = torch::zeros({5}, torch::requires_grad());
  auto opt = make(w);
  GradScaler scaler;
  for (int k = 0; k < 4; ++k) scaled_vr_iteration(*opt, prob, w, scaler, batches[k]);
  const auto w_before = w.detach().clone();
  const auto state_before = bytes_of(*opt);
  const double scale = scaler.get_scale();
  w.mutable_grad().reset();
  auto bad_batch = [&] {
    auto l = prob.loss(w, batches[4]);
    scaler.scale(l).backward();
    w.grad()[2].fill_(kInf);
    return l;
  };
  scaler.step(*opt, bad_batch);
  scaler.update();
  EXPECT_TRUE(torch::equal(w, w_before));
  EXPECT_TRUE(bytes_of(*opt) == state_before) << "the optimizer's serialized state changed";
  EXPECT_EQ(scaler.get_scale(), scale * 0.5);
}
}  // namespace

TEST(GradScalerClosureOverflow, SVRG) {
  expect_closure_overflow_skips<sgdx::optim::SVRG>(make_svrg);
}
TEST(GradScalerClosureOverflow, Katyusha) {
  expect_closure_overflow_skips<sgdx::optim::Katyusha>(make_katyusha);
}
TEST(GradScalerClosureOverflow, DASVRDA) {
  expect_closure_overflow_skips<sgdx::optim::DASVRDA>(make_dasvrda);
}

TEST(GradScalerClosureOverflow, RSGDAndGradQueue) {
  for (int which = 0; which < 2; ++which) {
    torch::manual_seed(3);
    auto w = torch::randn({6}, torch::requires_grad());
    std::unique_ptr<Optimizer> opt;
    if (which == 0)
      opt = std::make_unique<sgdx::optim::RSGD>(std::vector<at::Tensor>{w}, sgdx::optim::RSGDOptions(0.1));
    else
      opt = std::make_unique<sgdx::optim::GradQueueSGDM>(std::vector<at::Tensor>{w},
                                                         sgdx::optim::GradQueueSGDMOptions(0.1).q_min(2));
    GradScaler scaler;
    scaler.scale(at::zeros({}));  // the scale exists before the first step (a closure-only loop creates none)
    auto closure = [&](bool bad) {
      return [&, bad] {
        w.mutable_grad().reset();
        auto l = (w * w).sum();
        scaler.scale(l).backward();
        if (bad) w.grad()[0].fill_(kInf);
        return l;
      };
    };
    for (int k = 0; k < 4; ++k) {
      scaler.step(*opt, closure(false));
      scaler.update();
    }
    const auto w_before = w.detach().clone();
    const auto state_before = bytes_of(*opt);
    const double scale = scaler.get_scale();
    scaler.step(*opt, closure(true));
    scaler.update();
    EXPECT_TRUE(torch::equal(w, w_before)) << which;
    EXPECT_TRUE(bytes_of(*opt) == state_before) << which;
    EXPECT_EQ(scaler.get_scale(), scale * 0.5) << which;
  }
}

// ---------------------------------------------------------------- CUDA

TEST(GradScalerCuda, SkipRSGDAndGradQueue) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA);
  for (auto mode : kModes) {
    expect_invisible_skip(make_rsgd(), mode, cuda);
    for (auto storage : {sgdx::optim::GradQueueStorage::exact, sgdx::optim::GradQueueStorage::ema}) {
      expect_invisible_skip(make_gq(storage), mode, cuda, gq_window_full);
      auto with_loss = mode;
      with_loss.loss_closure = true;
      expect_invisible_skip(make_gq(storage), with_loss, cuda, gq_window_full);
    }
  }
}

// GradQueue-SGDM against an independent float64 reference that keeps the last
// L gradients in a deque and takes a direct mean/std, against
// torch::optim::SGD when every Delta-rho is 1 (the plain step; the clustered
// step is test_gradqueue_clustered.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <deque>
#include <optional>
#include <sstream>

#include "cuda/cuda_test_util.h"
#include "optim/optimizer_bytes.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/gradqueue.h"
#include "test_util.h"

namespace {

using sgdx::optim::GradQueueGranularity;
using sgdx::optim::GradQueueScope;
using sgdx::optim::GradQueueSGDM;
using sgdx::optim::GradQueueSGDMOptions;
using sgdx::optim::GradQueueStorage;

// The rule of gradqueue.md, written directly (one tensor, float64).
struct Reference {
  GradQueueSGDMOptions o;
  std::deque<torch::Tensor> q;  // raw d's, oldest first (exact storage)
  torch::Tensor m1, m2;         // running moments (ema storage)
  int64_t count = 0;            // ema storage: effective count
  int64_t L;
  double ema = 0;
  bool has_ema = false;
  torch::Tensor v;
  torch::Tensor last_rho;

  explicit Reference(GradQueueSGDMOptions opt) : o(opt), L(opt.q_init()) {}

  void observe(double loss) {
    if (!has_ema) {
      ema = loss, has_ema = true;
      return;
    }
    const double next = o.loss_beta() * ema + (1 - o.loss_beta()) * loss;
    L = next < ema ? std::min(L + 1, o.q_max()) : std::max(L - 1, o.q_min());
    ema = next;
  }

  void step(torch::Tensor& p, const torch::Tensor& grad) {
    const bool exact = o.storage() == GradQueueStorage::exact;
    while (exact && static_cast<int64_t>(q.size()) > L) q.pop_front();
    count = std::min(count, L);
    auto d = grad + o.weight_decay() * p;
    const int64_t n = exact ? static_cast<int64_t>(q.size()) : count;
    torch::Tensor rho = torch::ones_like(d);
    if (n >= o.q_min()) {
      torch::Tensor mu, sigma;
      if (exact) {
        auto s = torch::stack(std::vector<torch::Tensor>(q.begin(), q.end()));
        mu = s.mean(0);
        sigma = s.std(0, /*unbiased=*/false);
      } else {
        mu = m1;
        sigma = (m2 - m1 * m1).clamp_min(0).sqrt();
      }
      torch::Tensor z;
      if (o.granularity() == GradQueueGranularity::element) {
        z = (d - mu).abs() / (sigma + o.eps()) / std::sqrt(2.0 / M_PI);
      } else {
        z = ((d - mu).norm() / (sigma.square().sum().sqrt() + o.eps())) * torch::ones_like(d);
      }
      rho = z.pow(o.kappa()).clamp(o.rho_min(), o.rho_max());
    }
    last_rho = rho;
    auto gh = rho * d;
    if (exact) {
      q.push_back(d.clone());
      while (static_cast<int64_t>(q.size()) > L) q.pop_front();
    } else {
      const double rate = 1.0 / double(std::min(count + 1, L));
      if (!m1.defined()) m1 = torch::zeros_like(d), m2 = torch::zeros_like(d);
      m1 = m1 + rate * (d - m1);
      m2 = m2 + rate * (d * d - m2);
      count = std::min(count + 1, L);
    }
    auto u = gh;
    if (o.momentum() != 0) {
      v = v.defined() ? o.momentum() * v + (1 - o.dampening()) * gh : gh.clone();
      u = o.nesterov() ? gh + o.momentum() * v : v;
    }
    p = p - o.lr() * u;
  }
};

// Losses that first fall (L grows to q_max), then rise (L shrinks to q_min), then wander.
double loss_at(int64_t t) {
  if (t < 30) return 10.0 - 0.2 * t;
  if (t < 70) return 4.0 + 0.3 * (t - 30);
  return 10.0 + std::sin(0.7 * t);
}

void run_against_reference(GradQueueSGDMOptions o, int64_t steps, bool with_loss) {
  torch::manual_seed(21);
  auto p0 = torch::randn({7, 5}, torch::kDouble);
  auto p = p0.clone().requires_grad_(true);
  GradQueueSGDM opt({p}, o);
  Reference ref(o);
  auto pr = p0.clone();
  for (int64_t t = 0; t < steps; ++t) {
    // Heavy-tailed gradients around a drifting mean, plus an occasional constant stretch.
    auto g = 0.5 * torch::randn({7, 5}, torch::kDouble) + 0.05 * t;
    if (t % 11 == 0) g = g + 8.0 * torch::randn({7, 5}, torch::kDouble).pow(3);
    p.mutable_grad() = g.clone();
    if (with_loss) {
      opt.observe_loss(loss_at(t));
      ref.observe(loss_at(t));
    }
    opt.step();
    ref.step(pr, g);
    // Parameters of size 1-10 after gradients up to ~1e3 (the cubed stretches) summed over
    // windows of up to 32 in another order than the reference: float64 rounding reaches
    // ~1e-12 absolute (seen at -O1), far below any rule error.
    ASSERT_TRUE(torch::allclose(p.detach(), pr, 1e-10, 1e-10))
        << "step " << t << " max diff " << (p.detach() - pr).abs().max().item<double>();
    EXPECT_EQ(opt.last_step_info().window, ref.L) << "step " << t;
    EXPECT_GE(ref.last_rho.min().item<double>(), o.rho_min());
    EXPECT_LE(ref.last_rho.max().item<double>(), o.rho_max());
    EXPECT_NEAR(opt.last_step_info().mean_rho, ref.last_rho.mean().item<double>(), 1e-9) << "step " << t;
  }
}

TEST(GradQueueSGDM, ElementGranularityMatchesDirectWindowStatistics) {
  auto o = GradQueueSGDMOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01).resync_every(7);
  run_against_reference(o, 100, /*with_loss=*/true);
}

TEST(GradQueueSGDM, TensorGranularityMatchesDirectWindowStatistics) {
  auto o =
      GradQueueSGDMOptions(0.05).granularity(GradQueueGranularity::tensor).nesterov(true).q_min(3).q_max(12);
  run_against_reference(o, 100, /*with_loss=*/true);
}

TEST(GradQueueSGDM, WithoutLossTheWindowStaysAtQInit) {
  auto o =
      GradQueueSGDMOptions(0.1).momentum(0).kappa(1.5).rho_min(0.25).rho_max(4.0).q_init(5).resync_every(0);
  run_against_reference(o, 40, /*with_loss=*/false);
}

TEST(GradQueueSGDM, EmaStorageMatchesItsRunningMoments) {
  auto o = GradQueueSGDMOptions(0.05).storage(GradQueueStorage::ema);
  run_against_reference(o, 80, /*with_loss=*/true);
  run_against_reference(o.granularity(GradQueueGranularity::tensor), 80, true);
}

// Delta-rho = 1 must be torch::optim::SGD exactly (momentum, dampening, nesterov, weight decay).
TEST(GradQueueSGDM, RhoOneIsSGDMomentum) {
  for (const bool nesterov : {false, true}) {
    torch::manual_seed(4);
    auto a = torch::randn({64, 33}, torch::kDouble).requires_grad_(true);
    auto b = a.detach().clone().requires_grad_(true);
    const double damp = nesterov ? 0.0 : 0.2;
    GradQueueSGDM gq({a}, GradQueueSGDMOptions(0.03)
                              .momentum(0.8)
                              .dampening(damp)
                              .nesterov(nesterov)
                              .weight_decay(1e-3)
                              .rho_min(1.0)
                              .rho_max(1.0)
                              .q_min(1));
    torch::optim::SGD sgd(
        {b},
        torch::optim::SGDOptions(0.03).momentum(0.8).dampening(damp).nesterov(nesterov).weight_decay(1e-3));
    for (int t = 0; t < 30; ++t) {
      auto g = torch::randn({64, 33}, torch::kDouble);
      a.mutable_grad() = g.clone();
      b.mutable_grad() = g.clone();
      gq.observe_loss(loss_at(t));
      gq.step();
      sgd.step();
      ASSERT_TRUE(torch::allclose(a, b, 1e-13, 1e-13)) << "step " << t;
    }
  }
}

TEST(GradQueueSGDM, ConstantGradientsGiveNoNaN) {
  for (auto gran : {GradQueueGranularity::element, GradQueueGranularity::tensor}) {
    auto p = torch::zeros({10}).requires_grad_(true);
    GradQueueSGDM opt({p}, GradQueueSGDMOptions(1.0).momentum(0).granularity(gran));
    for (int t = 0; t < 20; ++t) {
      auto before = p.detach().clone();
      p.mutable_grad() = torch::full({10}, 0.5);
      opt.step();
      ASSERT_TRUE(torch::isfinite(p).all().item<bool>());
      // sigma = 0 and d = mu once the window is warm: z = 0, Delta-rho = rho_min.
      const double expect = t >= 4 ? 0.5 * 0.5 : 0.5;
      EXPECT_TRUE(torch::allclose(before - p.detach(), torch::full({10}, expect))) << "step " << t;
    }
  }
}

TEST(GradQueueSGDM, NonContiguousParametersAndStateBytes) {
  auto base = torch::randn({8, 6}, torch::kDouble);
  auto p = base.t().contiguous().t().requires_grad_(true);  // transposed layout
  ASSERT_FALSE(p.is_contiguous());
  auto q = base.clone().requires_grad_(true);
  auto o = GradQueueSGDMOptions(0.1).q_min(2);
  GradQueueSGDM a({p}, o), b({q}, o);
  for (int t = 0; t < 6; ++t) {
    auto g = torch::randn({8, 6}, torch::kDouble);
    p.mutable_grad() = g.clone();
    q.mutable_grad() = g.clone();
    a.step();
    b.step();
  }
  EXPECT_TRUE(torch::equal(p.detach(), q.detach()));
  EXPECT_EQ(b.state_bytes(), (32 + 3) * 48 * 8);  // queue q_max x numel + S1, S2, momentum
}

// Gradients whose spread is about 1e-3 of their mean: S2/n - mu^2 cancels in float32
// (relative error of the variance ~ 1e-1), the Welford-form statistics do not. The
// float32 trajectory over 60 steps stays within 1e-5 (relative, parameter norm) of the
// independent float64 reference fed the same float32 gradients.
TEST(GradQueueSGDM, Float32WindowStatisticsSurviveSmallSpread) {
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    auto o = GradQueueSGDMOptions(0.01).q_min(4).q_init(8).q_max(16).storage(storage).resync_every(0);
    torch::manual_seed(5);
    const int64_t n = 256;
    const auto mean = 1.0 + torch::rand({n}, torch::kDouble);
    auto p = torch::randn({n}, torch::kFloat).requires_grad_(true);
    GradQueueSGDM opt({p}, o);
    Reference ref(o);
    auto pr = p.detach().to(torch::kDouble);
    std::deque<torch::Tensor> window;  // float32 rows for the cancellation check below
    double worst = 0.0;
    for (int64_t t = 0; t < 60; ++t) {
      const auto g32 = (mean * (1.0 + 1e-3 * torch::randn({n}, torch::kDouble))).to(torch::kFloat);
      p.mutable_grad() = g32.clone();
      opt.observe_loss(loss_at(t));
      ref.observe(loss_at(t));
      opt.step();
      ref.step(pr, g32.to(torch::kDouble));
      worst = std::max(worst, ((p.detach().to(torch::kDouble) - pr).norm() / pr.norm()).item<double>());
      window.push_back(g32);
      if (static_cast<int64_t>(window.size()) > 16) window.pop_front();
    }
    EXPECT_LT(worst, 1e-5) << "storage " << static_cast<int>(storage);
    // The regime is the hard one: the sum form of the same 16-row window in float32 is far off.
    auto s1 = torch::zeros({n}), s2 = torch::zeros({n});
    for (const auto& r : window) s1 += r, s2 += r * r;
    const auto naive = (s2 / 16 - (s1 / 16).square()).to(torch::kDouble);
    const auto rows =
        torch::stack(std::vector<torch::Tensor>(window.begin(), window.end())).to(torch::kDouble);
    const auto exact = rows.var(0, /*unbiased=*/false);
    EXPECT_GT(((naive - exact).abs() / exact).mean().item<double>(), 1e-2);
  }
}

// Half and bfloat16 parameters keep their window statistics in float32.
TEST(GradQueueSGDM, HalfParametersKeepFloat32Statistics) {
  for (auto dt : {torch::kHalf, torch::kBFloat16}) {
    torch::manual_seed(2);
    auto p = torch::randn({64}).to(dt).requires_grad_(true);
    auto q = p.detach().to(torch::kFloat).requires_grad_(true);
    auto o = GradQueueSGDMOptions(0.05).q_min(2);
    GradQueueSGDM a({p}, o), b({q}, o);
    for (int t = 0; t < 10; ++t) {
      auto g = torch::randn({64});
      p.mutable_grad() = g.to(dt);
      q.mutable_grad() = g.to(dt).to(torch::kFloat);
      a.step();
      b.step();
    }
    const auto& st = static_cast<const sgdx::optim::GradQueueSGDMParamState&>(*a.state().begin()->second);
    EXPECT_EQ(st.s1().scalar_type(), torch::kDouble);  // the exact window's mean: float64 for every dtype
    EXPECT_EQ(st.s2().scalar_type(), torch::kFloat);
    EXPECT_EQ(st.queue().scalar_type(), torch::kFloat);
    const double tol = dt == torch::kHalf ? 5e-3 : 4e-2;  // the parameter's own rounding per step
    EXPECT_TRUE(torch::allclose(p.detach().to(torch::kFloat), q.detach(), tol, tol)) << dt;
  }
}

}  // namespace

// GradQueue-SGDM against an independent float64 reference that keeps the last
// L gradients in a deque and takes a direct mean/std, against
// torch::optim::SGD when every Delta-rho is 1, and the clustered step's fast
// path against its per-cluster-autograd reference.
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

// A small net with every kind of layer the fast path handles.
struct Net : torch::nn::Module {
  torch::nn::Conv2d conv{nullptr};
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  Net() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 4, 3).padding(1)));
    norm = register_module("norm", torch::nn::GroupNorm(2, 4));
    fc1 = register_module("fc1", torch::nn::Linear(4 * 5 * 5, 12));
    fc2 = register_module("fc2", torch::nn::Linear(12, 3));
  }
  // Returns logits and the input of the last Linear (the clustering features).
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
    auto h = torch::relu(norm(conv(x))).flatten(1);
    auto f = torch::relu(fc1(h));
    return {fc2(f), f};
  }
};

struct Batch {
  torch::Tensor x, y;
};
std::vector<Batch> batches(int n, int64_t B) {
  torch::manual_seed(99);
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i)
    out.push_back({torch::randn({B, 2, 5, 5}, torch::kDouble), torch::randint(0, 3, {B}, torch::kLong)});
  return out;
}

std::shared_ptr<Net> make_net(torch::Device device = torch::kCPU, torch::ScalarType dtype = torch::kDouble) {
  torch::manual_seed(7);
  auto net = std::make_shared<Net>();
  net->to(device, dtype);
  return net;
}

enum class Path { plain, reference, fast };

std::vector<torch::Tensor> train(Path path, GradQueueSGDMOptions o, const std::vector<Batch>& data,
                                 std::vector<std::vector<int64_t>>* sizes = nullptr,
                                 torch::Device device = torch::kCPU,
                                 torch::ScalarType dtype = torch::kDouble) {
  auto net = make_net(device, dtype);
  GradQueueSGDM opt(net->parameters(), o);
  sgdx::ops::PerSampleGradients cap(*net);
  for (const auto& batch : data) {
    const Batch b{batch.x.to(device, dtype), batch.y.to(device)};
    opt.zero_grad();
    if (path == Path::plain) {
      opt.step([&] {
        auto loss = torch::nn::functional::cross_entropy(net->forward(b.x).first, b.y);
        loss.backward();
        return loss;
      });
    } else {
      auto [logits, feats] = net->forward(b.x);
      auto losses = torch::nn::functional::cross_entropy(
          logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
      opt.clustered_step(losses, feats.detach(), path == Path::fast ? &cap : nullptr);
      if (sizes) sizes->push_back(opt.last_step_info().cluster_sizes);
    }
  }
  std::vector<torch::Tensor> out;
  for (auto& p : net->parameters()) out.push_back(p.detach().to(torch::kCPU, torch::kDouble).clone());
  return out;
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b, double rtol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::allclose(a[i], b[i], rtol, 1e-12))
        << "param " << i << " max diff " << (a[i] - b[i]).abs().max().item<double>();
}

TEST(GradQueueSGDMClustered, OneClusterIsThePlainTensorVariant) {
  const auto data = batches(12, 16);
  auto o = GradQueueSGDMOptions(0.05)
               .granularity(GradQueueGranularity::tensor)
               .q_min(2)
               .q_init(3)
               .weight_decay(1e-3)
               .clusters(1);
  const auto plain = train(Path::plain, o, data);
  expect_close(train(Path::reference, o, data), plain, 1e-9);
  expect_close(train(Path::fast, o, data), plain, 1e-9);
  // (scope = global measures scarcity on the whole model, so it is not the per-tensor rule even for K = 1.)
}

TEST(GradQueueSGDMClustered, FastPathEqualsPerClusterAutograd) {
  const auto data = batches(10, 24);
  for (auto scope : {GradQueueScope::per_tensor, GradQueueScope::global}) {
    auto o = GradQueueSGDMOptions(0.05).q_min(2).q_init(3).clusters(3).scope(scope).seed(5).nesterov(true);
    std::vector<std::vector<int64_t>> s_ref, s_fast;
    const auto ref = train(Path::reference, o, data, &s_ref);
    const auto fast = train(Path::fast, o, data, &s_fast);
    expect_close(fast, ref, 1e-9);
    EXPECT_EQ(s_ref, s_fast);
    // The clusters did split the batch (else this would only test K = 1).
    for (auto& s : s_ref) EXPECT_LT(*std::max_element(s.begin(), s.end()), 24);
    // And reweighting changed the trajectory compared with SGD-momentum.
    const auto sgdm = train(Path::reference, o.rho_min(1.0).rho_max(1.0), data);
    double diff = 0;
    for (size_t i = 0; i < ref.size(); ++i) diff += (ref[i] - sgdm[i]).abs().sum().item<double>();
    EXPECT_GT(diff, 1e-6);
  }
}

TEST(GradQueueSGDMClustered, GradHoldsTheBatchMeanGradient) {
  auto net = make_net();
  GradQueueSGDM opt(net->parameters(), GradQueueSGDMOptions(0.05).clusters(2).weight_decay(0.1));
  const auto b = batches(1, 12)[0];
  auto [logits, feats] = net->forward(b.x);
  auto losses = torch::nn::functional::cross_entropy(
      logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  auto expected = torch::autograd::grad({losses.mean()}, net->parameters(), {}, /*retain_graph=*/true);
  sgdx::ops::PerSampleGradients cap(*net);
  opt.clustered_step(losses, feats.detach(), &cap);
  auto params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(torch::allclose(params[i].grad(), expected[i], 1e-10, 1e-12));
}

std::string save(const GradQueueSGDM& opt) {
  return sgdx::testing::optimizer_bytes(opt);
}

TEST(GradQueueSGDM, SaveLoadResumesBitIdentically) {
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    for (const bool clustered : {false, true}) {
      const auto data = batches(14, 16);
      auto o = GradQueueSGDMOptions(0.05)
                   .q_min(2)
                   .q_init(3)
                   .q_max(6)
                   .storage(storage)
                   .clusters(clustered ? 3 : 1)
                   .resync_every(5)
                   .seed(3);
      auto run = [&](const std::shared_ptr<Net>& net, GradQueueSGDM& opt, int from, int to) {
        sgdx::ops::PerSampleGradients cap(*net);
        for (int i = from; i < to; ++i) {
          opt.zero_grad();
          if (clustered) {
            auto [logits, feats] = net->forward(data[i].x);
            auto losses = torch::nn::functional::cross_entropy(
                logits, data[i].y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
            opt.clustered_step(losses, feats.detach(), &cap);
          } else {
            opt.step([&] {
              auto loss = torch::nn::functional::cross_entropy(net->forward(data[i].x).first, data[i].y);
              loss.backward();
              return loss;
            });
          }
        }
      };
      auto net = make_net();
      GradQueueSGDM opt(net->parameters(), o);
      run(net, opt, 0, 7);
      const auto blob = save(opt);
      std::vector<torch::Tensor> mid;
      for (auto& p : net->parameters()) mid.push_back(p.detach().clone());
      run(net, opt, 7, 14);

      auto net2 = make_net();
      {
        torch::NoGradGuard ng;
        auto ps = net2->parameters();
        for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(mid[i]);
      }
      GradQueueSGDM opt2(net2->parameters(), GradQueueSGDMOptions(1.0));
      torch::serialize::InputArchive in;
      std::istringstream s(blob);
      in.load_from(s);
      opt2.load(in);
      run(net2, opt2, 7, 14);
      auto a = net->parameters(), b = net2->parameters();
      for (size_t i = 0; i < a.size(); ++i)
        EXPECT_TRUE(torch::equal(a[i], b[i]))
            << "param " << i << " storage " << int(storage) << " clustered " << clustered;
    }
  }
}

TEST(GradQueueSGDM, ClearErrors) {
  auto net = make_net();
  const auto b = batches(1, 4)[0];
  auto [logits, feats] = net->forward(b.x);
  auto losses = torch::nn::functional::cross_entropy(
      logits, b.y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  GradQueueSGDM k5(net->parameters(), GradQueueSGDMOptions(0.1).clusters(5));
  SGDX_EXPECT_THROW_MSG(k5.clustered_step(losses, feats.detach()), "clusters = 5 exceeds the batch size 4");
  GradQueueSGDM k2(net->parameters(), GradQueueSGDMOptions(0.1).clusters(2));
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, feats.detach().slice(0, 0, 3)),
                        "features have 3 rows but there are 4 per-sample losses");
  auto bad = feats.detach().clone();
  bad[1][0] = std::nan("");
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, bad), "non-finite feature in row 1");
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses.detach(), feats.detach()), "no autograd graph");
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, feats.detach().flatten()), "features must be 2-D");
  auto other_net = make_net();
  sgdx::ops::PerSampleGradients other(*other_net);
  SGDX_EXPECT_THROW_MSG(k2.clustered_step(losses, feats.detach(), &other),
                        "not captured by the PerSampleGradients");

  auto p = torch::zeros({3}, torch::requires_grad());
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(0.1).q_init(40)),
                        "q_init must be in [q_min, q_max] = [4, 32], got 40");
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(0.1).rho_min(3.0)),
                        "need 0 < rho_min <= rho_max < inf, got rho_min 3");
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(-1)), "lr must be finite and >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(GradQueueSGDM({p}, GradQueueSGDMOptions(0.1).momentum(1.0)),
                        "momentum must be in [0, 1)");
  GradQueueSGDM ok({p}, GradQueueSGDMOptions(0.1));
  SGDX_EXPECT_THROW_MSG(ok.observe_loss(std::nan("")), "observed loss is not finite");
}

}  // namespace

namespace {
// A parameter that gets no gradient for a while keeps the same window length as
// the others (the loss trend applies to every tensor with state).
TEST(GradQueueSGDM, WindowFollowsTheLossWithoutAGradient) {
  auto a = torch::zeros({4}, torch::requires_grad());
  auto b = torch::zeros({4}, torch::requires_grad());
  GradQueueSGDM opt({a, b}, GradQueueSGDMOptions(0.1).q_min(2).q_init(3).q_max(10));
  auto st = [&](const torch::Tensor& p) -> const sgdx::optim::GradQueueSGDMParamState& {
    return static_cast<const sgdx::optim::GradQueueSGDMParamState&>(*opt.state().at(p.unsafeGetTensorImpl()));
  };
  for (int t = 0; t < 8; ++t) {
    a.mutable_grad() = torch::randn({4});
    if (t < 2)
      b.mutable_grad() = torch::randn({4});
    else
      b.mutable_grad() = torch::Tensor();
    opt.observe_loss(10.0 - t);  // falling: the window grows every step after the first
    opt.step();
    EXPECT_EQ(st(a).window(), st(b).window()) << "step " << t;
  }
  EXPECT_EQ(st(a).window(), 3 + 7);
  EXPECT_EQ(st(b).count(), 2);  // b pushed only twice
}
}  // namespace

// fused_cuda only changes what runs on CUDA parameters: on the CPU the results are
// bit-identical; like a backend, it is not taken from a checkpoint.
TEST(GradQueueSGDM, FusedCudaOptionLeavesCpuUntouchedAndRoundTrips) {
  const auto data = batches(8, 16);
  auto o = GradQueueSGDMOptions(0.05).q_min(2).q_init(3).clusters(3).seed(2);
  for (auto path : {Path::plain, Path::fast}) {
    const auto a = train(path, o, data);
    const auto b = train(path, GradQueueSGDMOptions(o).fused_cuda(true), data);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "param " << i;
  }
  auto net = make_net();
  for (const bool saved : {false, true}) {
    GradQueueSGDM opt(net->parameters(), GradQueueSGDMOptions(0.05).fused_cuda(saved));
    const auto blob = save(opt);
    GradQueueSGDM opt2(net->parameters(), GradQueueSGDMOptions(1.0).fused_cuda(!saved));
    torch::serialize::InputArchive in;
    std::istringstream s(blob);
    in.load_from(s);
    opt2.load(in);
    EXPECT_EQ(static_cast<const GradQueueSGDMOptions&>(opt2.defaults()).fused_cuda(), !saved);
    EXPECT_EQ(static_cast<const GradQueueSGDMOptions&>(opt2.defaults()).lr(), 0.05);
  }
}

// On a GPU: the fused kernels (multi-tensor step, k-means, cluster statistics) against
// the ATen path on the same device, float32, every storage and granularity.
TEST(GradQueueSGDMCuda, FusedKernelsMatchTheAtenPath) {
  SGDX_REQUIRE_CUDA();
  const auto data = batches(12, 32);
  for (auto storage : {GradQueueStorage::exact, GradQueueStorage::ema}) {
    for (auto gran : {GradQueueGranularity::element, GradQueueGranularity::tensor}) {
      for (auto path : {Path::plain, Path::fast}) {
        auto o = GradQueueSGDMOptions(0.05)
                     .q_min(2)
                     .q_init(3)
                     .q_max(6)
                     .resync_every(5)
                     .storage(storage)
                     .granularity(gran)
                     .weight_decay(1e-3)
                     .clusters(path == Path::fast ? 3 : 1)
                     .seed(4);
        std::vector<std::vector<int64_t>> s_aten, s_fused;
        const auto aten = train(path, o, data, &s_aten, torch::kCUDA, torch::kFloat);
        const auto fused = train(path, GradQueueSGDMOptions(o).fused_cuda(true), data, &s_fused, torch::kCUDA,
                                 torch::kFloat);
        EXPECT_EQ(s_aten, s_fused);
        for (size_t i = 0; i < aten.size(); ++i) {
          EXPECT_TRUE(torch::allclose(fused[i], aten[i], 1e-4, 1e-5))
              << "param " << i << " storage " << int(storage) << " granularity " << int(gran) << " path "
              << int(path) << " max diff " << (fused[i] - aten[i]).abs().max().item<double>();
        }
      }
    }
  }
}

#if SGDX_WITH_CUDA
// One plain step on a GPU under CUDA's sync-debug mode: the only synchronising call
// permitted is the single read of found_inf (skip-safe host bookkeeping).
TEST(GradQueueSGDMCuda, StepSyncsOnlyToReadFoundInf) {
  SGDX_REQUIRE_CUDA();
  for (const bool fused : {false, true}) {
    torch::manual_seed(1);
    auto p1 = torch::randn({300, 17}, torch::kCUDA).requires_grad_(true);
    auto p2 = torch::randn({17}, torch::kCUDA).requires_grad_(true);
    GradQueueSGDM opt({p1, p2}, GradQueueSGDMOptions(0.05).q_min(2).fused_cuda(fused));
    const auto found_inf = torch::zeros({1}, torch::TensorOptions().device(torch::kCUDA));
    for (int t = 0; t < 6; ++t) {
      p1.mutable_grad() = torch::randn_like(p1);
      p2.mutable_grad() = torch::randn_like(p2);
      if (t < 5) {
        opt.step_scaled({}, found_inf);
        continue;
      }
      sgdx::testing::SyncCounter syncs;
      opt.step_scaled({}, found_inf);
      EXPECT_LE(syncs.syncs, 1) << "fused " << fused;
    }
  }
}
#endif

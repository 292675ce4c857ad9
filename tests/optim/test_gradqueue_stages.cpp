// The clustered step's stages (sgdx/optim/detail/gradqueue_stages.h) against
// brute-force float64 references written from docs/gradqueue.md, the
// optimizer-wide options, and the options' list against checkpoints.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "sgdx/optim/detail/gradqueue_stages.h"
#include "sgdx/optim/gradqueue.h"
#include "test_util.h"

namespace {

using sgdx::optim::GradQueueOptionScope;
using sgdx::optim::GradQueueScope;
using sgdx::optim::GradQueueSGDM;
using sgdx::optim::GradQueueSGDMOptions;
namespace gd = sgdx::optim::detail;

std::vector<double> host(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kDouble).contiguous().view(-1);
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Stage 2 on a linear model: loss_i = (w . x_i + b - y_i)^2 / 2, whose per-sample
// gradients are r_i x_i and r_i; G_k = mean over the cluster + wd * theta.
TEST(GradQueueStages, MeansMatchPerSampleGradientsByHand) {
  torch::manual_seed(1);
  const int64_t B = 9, D = 4, K = 3;
  const double wd = 0.1;
  auto w = torch::randn({D}, torch::kDouble).requires_grad_();
  auto b = torch::randn({1}, torch::kDouble).requires_grad_();
  auto x = torch::randn({B, D}, torch::kDouble), y = torch::randn({B}, torch::kDouble);
  const std::vector<int64_t> cluster{2, 0, 2, 2, 0, 2, 0, 0, 2};  // cluster 1 is empty
  auto losses = 0.5 * (x.matmul(w) + b - y).square();
  gd::ClusterAssignment c;
  c.assignment = torch::tensor(cluster, torch::kLong);
  c.sizes = {4, 0, 5};
  c.counts = torch::tensor({4.0, 0.0, 5.0}, torch::kDouble);
  const auto sums = gd::cluster_gradient_sums(losses, {w, b}, c, nullptr);
  const auto inv = c.counts.clamp_min(1).reciprocal();
  const auto gw = host(gd::cluster_means(sums[0], inv, w, wd));
  const auto gb = host(gd::cluster_means(sums[1], inv, b, wd));
  ASSERT_EQ(gw.size(), static_cast<size_t>(K * D));
  const auto X = host(x), Y = host(y), W = host(w), Bv = host(b);
  for (int64_t k = 0; k < K; ++k) {
    std::vector<double> ew(D, 0.0);
    double eb = 0.0;
    int64_t n = 0;
    for (int64_t i = 0; i < B; ++i) {
      if (cluster[i] != k) continue;
      double r = Bv[0] - Y[i];
      for (int64_t d = 0; d < D; ++d) r += W[d] * X[i * D + d];
      for (int64_t d = 0; d < D; ++d) ew[d] += r * X[i * D + d];
      eb += r;
      ++n;
    }
    const double s = n > 0 ? 1.0 / static_cast<double>(n) : 0.0;
    for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(gw[k * D + d], ew[d] * s + wd * W[d], 1e-12) << k << " " << d;
    EXPECT_NEAR(gb[k], eb * s + wd * Bv[0], 1e-12) << k;
  }
}

// One tensor's window written out: the rows, mu, M2 and the cluster means.
struct WindowCase {
  torch::Tensor param, rows, sums;  // rows [n, numel]; sums [K, numel]
  gd::ScarcityTensor t;
};

WindowCase window_case(int64_t numel, int64_t n, const torch::Tensor& counts, double wd, double kappa) {
  WindowCase w;
  const int64_t K = counts.numel();
  w.param = torch::randn({numel}, torch::kDouble);
  w.rows = torch::randn({n, numel}, torch::kDouble) * 0.5 + 0.2;
  w.sums = torch::randn({K, numel}, torch::kDouble) * counts.unsqueeze(1);
  const auto mu = w.rows.mean(0);
  w.t.stats = {w.sums, w.param, mu, (w.rows - mu).square().sum(0), 1.0 / static_cast<double>(n), wd};
  w.t.rule = {1e-8, kappa, 0.5, 2.0};
  return w;
}

// ||G_k - mu||^2 and sum sigma^2 of one window, by loops over host values.
void brute_moments(const WindowCase& w, const std::vector<double>& counts, std::vector<double>& dev,
                   double& var) {
  const auto rows = host(w.rows), sums = host(w.sums), p = host(w.param);
  const auto numel = static_cast<int64_t>(p.size());
  const int64_t n = w.rows.size(0), K = static_cast<int64_t>(counts.size());
  dev.assign(K, 0.0);
  var = 0.0;
  for (int64_t e = 0; e < numel; ++e) {
    double mu = 0.0, s2 = 0.0;
    for (int64_t j = 0; j < n; ++j) mu += rows[j * numel + e] / static_cast<double>(n);
    for (int64_t j = 0; j < n; ++j) s2 += (rows[j * numel + e] - mu) * (rows[j * numel + e] - mu);
    var += s2 / static_cast<double>(n);
    for (int64_t k = 0; k < K; ++k) {
      const double g = sums[k * numel + e] / std::max(counts[k], 1.0) + w.t.stats.weight_decay * p[e];
      dev[k] += (g - mu) * (g - mu);
    }
  }
}

double clip_rho(double dev, double var, const gd::ScarcityRule& r) {
  const double z = std::pow(std::sqrt(dev) / (std::sqrt(var) + r.eps), r.kappa);
  return std::min(std::max(z, r.rho_min), r.rho_max);
}

TEST(GradQueueStages, ScarcityMatchesTheSpecPerTensorAndGlobal) {
  torch::manual_seed(2);
  const std::vector<double> counts{3.0, 0.0, 5.0, 1.0};
  const auto c = torch::tensor(counts, torch::kDouble);
  const auto inv = c.clamp_min(1).reciprocal();
  std::vector<WindowCase> cases{window_case(7, 4, c, 0.0, 1.0), window_case(5, 6, c, 0.05, 1.7),
                                window_case(3, 2, c, 0.0, 0.6)};
  std::vector<gd::ScarcityTensor> in;
  for (auto& w : cases) in.push_back(w.t);
  const gd::ScarcityRule global{1e-8, 1.3, 0.7, 1.6};
  const auto rho = gd::cluster_scarcity(in, inv, GradQueueScope::per_tensor, global, false);
  std::vector<double> gdev(counts.size(), 0.0);
  double gvar = 0.0;
  bool clipped_low = false, clipped_high = false, inside = false;
  for (size_t j = 0; j < cases.size(); ++j) {
    std::vector<double> dev;
    double var = 0.0;
    brute_moments(cases[j], counts, dev, var);
    const auto got = host(rho[j]);
    for (size_t k = 0; k < counts.size(); ++k) {
      const double want = clip_rho(dev[k], var, cases[j].t.rule);
      EXPECT_NEAR(got[k], want, 1e-12) << "tensor " << j << " cluster " << k;
      clipped_low |= want == cases[j].t.rule.rho_min;
      clipped_high |= want == cases[j].t.rule.rho_max;
      inside |= want > cases[j].t.rule.rho_min && want < cases[j].t.rule.rho_max;
      gdev[k] += dev[k];
    }
    gvar += var;
  }
  EXPECT_TRUE(clipped_low && clipped_high && inside) << "the cases should cover both clips and the inside";
  const auto grho = gd::cluster_scarcity(in, inv, GradQueueScope::global, global, false);
  for (size_t j = 0; j < cases.size(); ++j) {
    const auto got = host(grho[j]);
    for (size_t k = 0; k < counts.size(); ++k) EXPECT_NEAR(got[k], clip_rho(gdev[k], gvar, global), 1e-12);
  }
  // A tensor in its warm-up: Delta-rho 1 for it, and for every tensor with the global scope.
  in[1].warm_up = true;
  const auto warm = gd::cluster_scarcity(in, inv, GradQueueScope::per_tensor, global, false);
  EXPECT_TRUE(torch::equal(warm[1], torch::ones({4}, torch::kDouble)));
  EXPECT_TRUE(torch::equal(warm[0], rho[0]));
  for (const auto& r : gd::cluster_scarcity(in, inv, GradQueueScope::global, global, false))
    EXPECT_TRUE(torch::equal(r, torch::ones({4}, torch::kDouble)));
}

TEST(GradQueueStages, CombineIsTheWeightedSumOfTheMeans) {
  torch::manual_seed(3);
  const auto means = torch::randn({3, 6}, torch::kDouble);
  const auto w = torch::tensor({0.25, 0.0, 0.75}, torch::kDouble);
  const auto rho = torch::tensor({1.5, 1.0, 0.5}, torch::kDouble);
  const auto p = torch::zeros({2, 3}, torch::kDouble);
  const auto d = gd::combine_clusters(means, w, rho, p);
  ASSERT_EQ(d.g_star.sizes(), p.sizes());
  const auto m = host(means), gs = host(d.g_star), gm = host(d.g_mean);
  const double W[3] = {0.25, 0.0, 0.75}, R[3] = {1.5, 1.0, 0.5};
  for (int e = 0; e < 6; ++e) {
    double s = 0, plain = 0;
    for (int k = 0; k < 3; ++k) s += W[k] * R[k] * m[k * 6 + e], plain += W[k] * m[k * 6 + e];
    EXPECT_NEAR(gs[e], s, 1e-15);
    EXPECT_NEAR(gm[e], plain, 1e-15);
  }
}

// clusters, seed, fused_cuda, ... are optimizer-wide: a group that sets another value is refused.
TEST(GradQueueSGDMOptions, OptimizerWideOptionsAreNotPerGroup) {
  auto a = torch::zeros({3}, torch::requires_grad());
  auto b = torch::zeros({2}, torch::requires_grad());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a});
  groups.emplace_back(std::vector<torch::Tensor>{b},
                      std::make_unique<GradQueueSGDMOptions>(GradQueueSGDMOptions(0.1).clusters(4)));
  SGDX_EXPECT_THROW_MSG(
      GradQueueSGDM(groups, GradQueueSGDMOptions(0.1)),
      "parameter group 1 sets clusters = 4 but the optimizer's is 1; clusters is optimizer-wide");
  // Per-group options of their own are kept; equal optimizer-wide values are accepted.
  groups[1] = torch::optim::OptimizerParamGroup(
      std::vector<torch::Tensor>{b},
      std::make_unique<GradQueueSGDMOptions>(GradQueueSGDMOptions(0.5).seed(7)));
  GradQueueSGDM opt(groups, GradQueueSGDMOptions(0.1).seed(7));
  auto group_options = [&](size_t i) -> GradQueueSGDMOptions& {
    return static_cast<GradQueueSGDMOptions&>(opt.param_groups()[i].options());
  };
  EXPECT_EQ(group_options(1).lr(), 0.5);
  // The defaults are the optimizer's: a change there reaches every group at the next step.
  static_cast<GradQueueSGDMOptions&>(opt.defaults()).seed(9).clusters(2);
  a.mutable_grad() = torch::ones({3});
  b.mutable_grad() = torch::ones({2});
  opt.step();
  EXPECT_EQ(group_options(0).seed(), 9u);
  EXPECT_EQ(group_options(1).clusters(), 2);
  // A group changed on its own is refused, naming the option and both values.
  group_options(0).fused_cuda(!group_options(0).fused_cuda());
  const bool fused = static_cast<const GradQueueSGDMOptions&>(opt.defaults()).fused_cuda();
  SGDX_EXPECT_THROW_MSG(opt.step(), std::string("parameter group 0 sets fused_cuda = ") +
                                        (fused ? "0" : "1") + " but the optimizer's is " +
                                        (fused ? "1" : "0"));
}

// Written out independently of SGDX_GRADQUEUE_OPTIONS: what a checkpoint must hold.
const std::vector<std::string> kSavedOptions{
    "lr",           "momentum",  "dampening", "nesterov",     "weight_decay", "q_min",       "q_init",
    "q_max",        "rho_min",   "rho_max",   "kappa",        "eps",          "granularity", "storage",
    "resync_every", "loss_beta", "clusters",  "kmeans_iters", "kmeans_tol",   "scope",       "seed"};

GradQueueSGDMOptions unusual_options() {
  return GradQueueSGDMOptions(0.3)
      .momentum(0.5)
      .dampening(0.1)
      .nesterov(false)
      .weight_decay(0.01)
      .q_min(2)
      .q_init(3)
      .q_max(5)
      .rho_min(0.25)
      .rho_max(3.0)
      .kappa(1.5)
      .eps(1e-6)
      .granularity(sgdx::optim::GradQueueGranularity::tensor)
      .storage(sgdx::optim::GradQueueStorage::ema)
      .resync_every(7)
      .loss_beta(0.8)
      .clusters(3)
      .kmeans_iters(4)
      .kmeans_tol(1e-3)
      .scope(GradQueueScope::global)
      .seed(123);
}

torch::serialize::InputArchive reread(torch::serialize::OutputArchive& out) {
  std::ostringstream s;
  out.save_to(s);
  std::istringstream is(s.str());
  torch::serialize::InputArchive in;
  in.load_from(is);
  return in;
}

TEST(GradQueueSGDMOptions, EveryOptionIsInTheCheckpoint) {
  const auto o = unusual_options();
  torch::serialize::OutputArchive out;
  o.serialize(out);
  auto in = reread(out);
  auto keys = in.keys();
  EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()),
            std::set<std::string>(kSavedOptions.begin(), kSavedOptions.end()));
  std::vector<std::string> listed;
  for (const auto& [name, where] : GradQueueSGDMOptions::fields())
    if (where != GradQueueOptionScope::process) listed.emplace_back(name);
  EXPECT_EQ(listed, kSavedOptions);
  GradQueueSGDMOptions back(1.0);
  back.serialize(in);
  EXPECT_TRUE(back == GradQueueSGDMOptions(o).fused_cuda(back.fused_cuda()));
  // A checkpoint without any one option is refused.
  for (const auto& drop : kSavedOptions) {
    torch::serialize::OutputArchive partial;
    for (const auto& k : kSavedOptions) {
      c10::IValue v;
      in.read(k, v);
      if (k != drop) partial.write(k, v);
    }
    auto pin = reread(partial);
    GradQueueSGDMOptions x(1.0);
    EXPECT_ANY_THROW(x.serialize(pin)) << drop;
  }
}

template <typename T>
T other_value(const T& x) {
  if constexpr (std::is_same_v<T, bool>) {
    return !x;
  } else if constexpr (std::is_enum_v<T>) {
    return static_cast<T>(1 - static_cast<int64_t>(x));
  } else {
    return x + 1;
  }
}

// operator== and printing see every option.
TEST(GradQueueSGDMOptions, EqualityAndPrintingSeeEveryOption) {
  const auto a = unusual_options();
  std::ostringstream s;
  s << a;
  for (const auto& [name, where] : GradQueueSGDMOptions::fields())
    EXPECT_NE(s.str().find(std::string(name) + "="), std::string::npos) << name;
  EXPECT_NE(s.str().find("clusters=3"), std::string::npos) << s.str();
  int compared = 0;
#define SGDX_GQ_TEST_EQ(T, name, init, where) \
  {                                           \
    auto b = a;                               \
    b.name(other_value(a.name()));            \
    EXPECT_FALSE(a == b) << #name;            \
    ++compared;                               \
  }
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_TEST_EQ)
#undef SGDX_GQ_TEST_EQ
  EXPECT_EQ(compared, static_cast<int>(GradQueueSGDMOptions::fields().size()));
  EXPECT_TRUE(a == GradQueueSGDMOptions(a));
}

}  // namespace

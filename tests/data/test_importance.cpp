#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <sstream>

#include "sgdx/data/importance.h"
#include "test_util.h"

using sgdx::data::ImportanceSampler;
using sgdx::data::ImportanceSamplerOptions;
using sgdx::data::SumTree;

namespace {
ImportanceSamplerOptions opts(double mix, uint64_t seed = 0, int64_t batches = 0) {
  ImportanceSamplerOptions o;
  o.mix = mix;
  o.seed = seed;
  o.batches_per_epoch = batches;
  return o;
}

// Draws `batches` batches (resetting at epoch ends) and takes each.
std::vector<sgdx::data::ImportanceBatch> draw(ImportanceSampler s, int batches, size_t b) {
  std::vector<sgdx::data::ImportanceBatch> out;
  while (static_cast<int>(out.size()) < batches) {
    if (!s.next(b)) {
      s.reset();
      continue;
    }
    out.push_back(s.take());
  }
  return out;
}

// Chi-square statistic of observed counts against probabilities.
double chi2(const std::vector<double>& counts, const at::Tensor& p) {
  double total = 0, x = 0;
  for (double c : counts) total += c;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = total * p[static_cast<int64_t>(i)].item<double>();
    x += (counts[i] - e) * (counts[i] - e) / e;
  }
  return x;
}
}  // namespace

TEST(SumTree, FindFollowsTheScoresForAnySize) {
  for (int64_t n : {1, 2, 3, 5, 8, 13}) {
    SumTree t(n, 0.0);
    for (int64_t i = 0; i < n; ++i) t.set(i, double(i % 3));  // some zero scores
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += t.get(i);
    EXPECT_DOUBLE_EQ(t.total(), total);
    if (total == 0) continue;
    // Scanning u across [0, total) visits every positive item in proportion to its score.
    std::vector<double> hits(n, 0);
    const int steps = 6000;
    for (int k = 0; k < steps; ++k) ++hits[t.find((k + 0.5) / steps * total)];
    for (int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(hits[i] / steps, t.get(i) / total, 2.0 / steps + 1e-9) << n << " " << i;
  }
  SGDX_EXPECT_THROW_MSG(SumTree(0), "size must be positive");
  SumTree t(4);
  SGDX_EXPECT_THROW_MSG(t.set(2, -1.0), "must be finite and >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(t.set(2, std::nan("")), "must be finite and >= 0, got nan");
  SGDX_EXPECT_THROW_MSG(t.set(4, 1.0), "index 4 out of range [0, 4)");
}

// The estimator (1/b) sum w_i G_i is unbiased for the mean gradient (5 standard errors per coordinate).
TEST(ImportanceSampler, WeightedEstimatorIsUnbiased) {
  torch::manual_seed(0);
  const int64_t n = 50;
  auto G = torch::randn({n, 4}, torch::kDouble) * torch::linspace(0.1, 5, n, torch::kDouble).unsqueeze(1);
  ImportanceSampler s(n, opts(0.2, 7));
  s.update(torch::arange(n), torch::linspace(0.1, 5, n, torch::kDouble).pow(2));
  std::vector<at::Tensor> est;
  for (auto& b : draw(s, 4000, 8)) {
    auto idx = torch::tensor(b.indices, torch::kLong);
    est.push_back((G.index_select(0, idx) * b.weights.to(torch::kDouble).unsqueeze(1)).mean(0));
  }
  auto e = torch::stack(est);
  auto se = e.std(0) / std::sqrt(double(e.size(0)));
  EXPECT_TRUE(((e.mean(0) - G.mean(0)).abs() <= 5 * se).all().item<bool>()) << e.mean(0) << G.mean(0);
  // And the weights are 1/(N p) of the drawn items.
  auto b = draw(s, 1, 16)[0];
  auto p = s.probabilities(torch::tensor(b.indices, torch::kLong));
  EXPECT_TRUE(torch::allclose(b.weights.to(torch::kDouble), 1.0 / (double(n) * p), 1e-6));
}

// Draw frequencies match p (chi-square, 0.999 quantile of chi2(19) = 43.8), also after updates.
TEST(ImportanceSampler, DrawFrequenciesMatchProbabilitiesIncludingAfterUpdates) {
  const int64_t n = 20;
  ImportanceSampler s(n, opts(0.1, 3));
  auto check = [&](int batches) {
    std::vector<double> counts(n, 0);
    for (auto& b : draw(s, batches, 50))
      for (auto i : b.indices) ++counts[i];
    EXPECT_LT(chi2(counts, s.probabilities(torch::arange(n))), 43.8);
  };
  check(200);  // initial: uniform scores
  s.update(torch::arange(n), torch::arange(n, torch::kDouble) + 1);
  check(200);
  s.update(torch::tensor({0, 19}), torch::tensor({50.0, 0.0}), /*beta=*/0.5);  // smoothed update
  // s_0 = 0.5 * 1 + 0.5 * 50 = 25.5, s_19 = 0.5 * 20 + 0.5 * 0 = 10; total 210 - 1 - 20 + 25.5 + 10.
  EXPECT_NEAR(s.probabilities(torch::tensor({19}))[0].item<double>(), 0.9 * 10.0 / 224.5 + 0.1 / 20, 1e-12);
  check(200);
}

TEST(ImportanceSampler, MixOneIsUniformWithUnitWeights) {
  const int64_t n = 10;
  ImportanceSampler s(n, opts(1.0, 5));
  s.update(torch::arange(n), torch::arange(n, torch::kDouble) * 100);
  std::vector<double> counts(n, 0);
  for (auto& b : draw(s, 300, 20)) {
    EXPECT_TRUE(torch::allclose(b.weights, torch::ones({20})));
    for (auto i : b.indices) ++counts[i];
  }
  EXPECT_LT(chi2(counts, torch::full({n}, 0.1, torch::kDouble)), 27.9);  // chi2(9) 0.999
}

TEST(ImportanceSampler, ZeroNanAndNegativeScores) {
  ImportanceSampler s(6, opts(0.1));
  s.update(torch::arange(6), torch::zeros({6}));
  EXPECT_TRUE(torch::allclose(s.probabilities(torch::arange(6)), torch::full({6}, 1.0 / 6, torch::kDouble)));
  auto b = draw(s, 1, 12)[0];
  EXPECT_TRUE(torch::allclose(b.weights, torch::ones({12})));
  // Only the epsilon floor keeps a zero-score example reachable: p = eps / N.
  s.update(torch::tensor({0}), torch::tensor({1.0}));
  EXPECT_NEAR(s.probabilities(torch::tensor({3}))[0].item<double>(), 0.1 / 6, 1e-15);
  SGDX_EXPECT_THROW_MSG(s.update(torch::tensor({2}), torch::tensor({std::nan("")})),
                        "score of example 2 must be finite and >= 0, got nan");
  SGDX_EXPECT_THROW_MSG(s.update(torch::tensor({1}), torch::tensor({-0.5})),
                        "score of example 1 must be finite and >= 0, got -0.5");
  SGDX_EXPECT_THROW_MSG(s.update(torch::tensor({9}), torch::tensor({1.0})), "index 9 out of range");
  SGDX_EXPECT_THROW_MSG(ImportanceSampler(6, opts(0.0)), "mix (eps) must be in (0, 1], got 0");
  SGDX_EXPECT_THROW_MSG(s.take(), "no drawn batch is waiting");
}

// A rejected update changes nothing: the entries before the bad one are not applied
// (the probabilities of every example are as before, bit for bit).
TEST(ImportanceSampler, RejectedUpdateLeavesTheTableUnchanged) {
  ImportanceSampler s(6, opts(0.1));
  s.update(torch::arange(6), torch::arange(6, torch::kDouble) + 1);
  const auto before = s.probabilities(torch::arange(6));
  SGDX_EXPECT_THROW_MSG(s.update(torch::tensor({0, 1, 2}), torch::tensor({7.0, 8.0, std::nan("")})),
                        "score of example 2 must be finite");
  EXPECT_TRUE(torch::equal(s.probabilities(torch::arange(6)), before));
  SGDX_EXPECT_THROW_MSG(s.update(torch::tensor({3, 4, 6}), torch::tensor({1.0, 2.0, 3.0})),
                        "index 6 out of range");
  EXPECT_TRUE(torch::equal(s.probabilities(torch::arange(6)), before));
}

// Beyond torch::multinomial's 2^24 categories: the last example can be drawn.
TEST(ImportanceSampler, MoreThanTwoToThe24Examples) {
  const int64_t n = (int64_t{1} << 24) + 1;
  ImportanceSampler s(n, opts(0.01, 1, 1));
  s.update(torch::tensor({n - 1}), torch::tensor({1e9}));
  ASSERT_TRUE(s.next(64).has_value());
  auto b = s.take();
  const auto hits = std::count(b.indices.begin(), b.indices.end(), n - 1);
  EXPECT_GT(hits, 40);  // p(last) ~ 0.99 * 1e9 / (1e9 + 2^24)
  const double p_last = s.probabilities(torch::tensor({n - 1}))[0].item<double>();
  EXPECT_NEAR(p_last, 0.99 * 1e9 / (1e9 + double(n - 1)) + 0.01 / double(n), 1e-12);
}

TEST(ImportanceSampler, PrefetchingWorkersKeepWeightsMatchedToExamples) {
  struct IndexDataset
      : torch::data::datasets::Dataset<IndexDataset, torch::data::Example<at::Tensor, at::Tensor>> {
    torch::data::Example<at::Tensor, at::Tensor> get(size_t i) override {
      return {torch::tensor(int64_t(i)), torch::tensor(int64_t(i))};
    }
    std::optional<size_t> size() const override { return 1000; }
  };
  ImportanceSampler handle(1000, opts(0.3, 9, /*batches=*/40));
  handle.update(torch::arange(1000), torch::arange(1000, torch::kDouble).pow(2));
  auto loader =
      torch::data::make_data_loader(IndexDataset(), handle, torch::data::DataLoaderOptions(16).workers(3));
  int batches = 0;
  for (auto& batch : *loader) {
    auto b = handle.take();
    ASSERT_EQ(b.indices.size(), batch.size());
    for (size_t j = 0; j < batch.size(); ++j)
      ASSERT_EQ(batch[j].data.item<int64_t>(), b.indices[j]) << batches;
    EXPECT_EQ(b.sequence, batches);
    // Scores change while the loader draws ahead; the batch keeps the weights it was drawn with.
    handle.update(torch::tensor(b.indices, torch::kLong), torch::ones({16}, torch::kDouble));
    ++batches;
  }
  EXPECT_EQ(batches, 40);
}

TEST(ImportanceSampler, SaveLoadResumesTheSameStream) {
  auto run_steps = [](ImportanceSampler s, int from, int to, std::vector<sgdx::data::ImportanceBatch>& out) {
    for (int step = from; step < to;) {
      if (!s.next(8)) {
        s.reset();
        continue;
      }
      auto b = s.take();
      auto idx = torch::tensor(b.indices, torch::kLong);
      s.update(idx, (idx.to(torch::kDouble) + step).remainder(7.0) + 0.5, 0.3);
      out.push_back(b);
      ++step;
    }
  };
  std::vector<sgdx::data::ImportanceBatch> full, resumed;
  run_steps(ImportanceSampler(30, opts(0.1, 4)), 0, 30, full);
  ImportanceSampler a(30, opts(0.1, 4));
  run_steps(a, 0, 13, resumed);
  std::ostringstream buf;
  {
    torch::serialize::OutputArchive ar;
    a.save(ar);
    ar.save_to(buf);
  }
  ImportanceSampler b(30, opts(0.5, 0));
  std::istringstream in(buf.str());
  torch::serialize::InputArchive ar;
  ar.load_from(in);
  b.load(ar);
  run_steps(b, 13, 30, resumed);
  ASSERT_EQ(resumed.size(), full.size());
  for (size_t k = 0; k < full.size(); ++k) {
    EXPECT_EQ(resumed[k].indices, full[k].indices) << k;
    EXPECT_TRUE(torch::equal(resumed[k].weights, full[k].weights)) << k;
    EXPECT_EQ(resumed[k].sequence, full[k].sequence);
  }
}

TEST(Importance, WeightedLossIsDetachedAndNotNormalised) {
  auto l = torch::tensor({1.0, 2.0, 3.0}, torch::requires_grad());
  auto w = torch::tensor({2.0, 0.5, 1.0}, torch::requires_grad());
  auto loss = sgdx::data::weighted_mean_loss(l, w);
  EXPECT_DOUBLE_EQ(loss.item<double>(), (2.0 + 1.0 + 3.0) / 3.0);  // mean(w l), not sum(w l)/sum(w)
  loss.backward();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_TRUE(torch::allclose(l.grad(), w.detach() / 3.0));
}

TEST(Importance, QualityMetricAndTau) {
  auto g = torch::tensor({1.0, 2.0, 3.0, 10.0}, torch::kDouble);
  EXPECT_NEAR(sgdx::data::sampling_quality(g, g / g.sum()), 1.0, 1e-12);
  EXPECT_NEAR(sgdx::data::sampling_quality(g, torch::full({4}, 0.25, torch::kDouble)), 0.0, 1e-12);
  EXPECT_LT(sgdx::data::sampling_quality(g, torch::tensor({0.7, 0.1, 0.1, 0.1}, torch::kDouble)), 0.0);
  // Independent computation of V for a middle p.
  auto p = torch::tensor({0.1, 0.2, 0.3, 0.4}, torch::kDouble);
  const double vu = g.pow(2).sum().item<double>() / 4, vp = (g.pow(2) / p).sum().item<double>() / 16,
               vo = std::pow(g.sum().item<double>(), 2) / 16;
  EXPECT_NEAR(sgdx::data::sampling_quality(g, p), (vu - vp) / (vu - vo), 1e-12);
  EXPECT_NEAR(sgdx::data::effective_batch_increase(torch::ones({8})), 1.0, 1e-12);
  EXPECT_GT(sgdx::data::effective_batch_increase(torch::tensor({1.0, 1.0, 1.0, 20.0})), 1.5);
  // K&F upper bound for softmax cross-entropy.
  auto logits = torch::tensor({{2.0, 0.0, -1.0}, {0.0, 0.0, 0.0}}, torch::kDouble);
  auto ub = sgdx::data::upper_bound_scores(logits, torch::tensor({0, 2}));
  auto p0 = torch::softmax(logits[0], 0);
  EXPECT_NEAR(ub[0].item<double>(),
              std::sqrt(std::pow(p0[0].item<double>() - 1, 2) + p0[1].item<double>() * p0[1].item<double>() +
                        p0[2].item<double>() * p0[2].item<double>()),
              1e-12);
  EXPECT_NEAR(ub[1].item<double>(), std::sqrt(2.0 / 9 + 4.0 / 9), 1e-12);
}

TEST(Importance, PresamplerSelectIsUnbiasedAndThresholdFollowsCostModel) {
  sgdx::data::Presampler ps(/*batch=*/4, /*ratio=*/3, /*mix=*/0.1, 0.9, 2);
  EXPECT_EQ(ps.presample_size(), 12);
  EXPECT_DOUBLE_EQ(ps.tau_threshold(), (12.0 + 12.0) / 12.0);
  EXPECT_FALSE(ps.importance_step());
  auto scores = torch::linspace(0.1, 3.0, 12, torch::kDouble);
  auto values = torch::linspace(-1, 5, 12, torch::kDouble);
  std::vector<double> est;
  for (int k = 0; k < 5000; ++k) {
    auto [pos, w] = ps.select(scores);
    est.push_back((values.index_select(0, pos) * w.to(torch::kDouble)).mean().item<double>());
  }
  auto e = torch::tensor(est, torch::kDouble);
  EXPECT_NEAR(e.mean().item<double>(), values.mean().item<double>(),
              5 * e.std().item<double>() / std::sqrt(5000.0));
  for (int k = 0; k < 60; ++k)
    ps.update_tau(torch::tensor({0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 50.0}));
  EXPECT_TRUE(ps.importance_step()) << ps.tau();
  SGDX_EXPECT_THROW_MSG(ps.select(torch::ones({5})), "expected 12 scores, got 5");
  SGDX_EXPECT_THROW_MSG(sgdx::data::Presampler(4, 1), "ratio must be >= 2, got 1");
}

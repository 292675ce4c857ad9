#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "sgdx/data/temperature.h"
#include "test_util.h"

using sgdx::data::TemperatureSampler;
using sgdx::data::TemperatureSchedule;

namespace {
const std::vector<int64_t> kSkewed = {2733, 162, 39, 1};

at::Tensor ids_of(const std::vector<int64_t>& sizes) {
  std::vector<at::Tensor> parts;
  for (size_t k = 0; k < sizes.size(); ++k)
    parts.push_back(torch::full({sizes[k]}, int64_t(k), torch::kLong));
  // Interleave so members of a group are not contiguous.
  auto ids = torch::cat(parts);
  return ids.index_select(0, torch::randperm(ids.numel(), torch::kLong));
}

std::vector<std::vector<size_t>> draw(TemperatureSampler s, int batches, size_t b) {
  std::vector<std::vector<size_t>> out;
  for (int i = 0; i < batches; ++i) {
    auto x = s.next(b);
    if (!x) {
      s.reset();
      x = s.next(b);
    }
    out.push_back(*x);
  }
  return out;
}
}  // namespace

// The paper's example: sizes 2733:162:39:1 at tau = 5.
TEST(Temperature, ClosedFormProbabilitiesAndWeights) {
  auto p = sgdx::data::temperature_probs(kSkewed, 5.0);
  auto w = sgdx::data::scalarization_weights(kSkewed, 5.0);
  const std::vector<double> p_want = {0.454, 0.258, 0.194, 0.093}, w_want = {0.49, 4.68, 14.6, 274};
  for (int k = 0; k < 4; ++k) {
    EXPECT_NEAR(p[k].item<double>(), p_want[k], 5e-4) << k;
    EXPECT_NEAR(w[k].item<double>() / w_want[k], 1.0, 5e-3) << k;
  }
  // Independent float64 closed form: n^(1/tau) / sum, w = p(tau) / p(1).
  double z = 0, n = 0;
  for (auto v : kSkewed) z += std::pow(double(v), 0.2), n += double(v);
  for (int k = 0; k < 4; ++k) {
    const double pk = std::pow(double(kSkewed[k]), 0.2) / z;
    EXPECT_NEAR(p[k].item<double>(), pk, 1e-14);
    EXPECT_NEAR(w[k].item<double>(), pk / (double(kSkewed[k]) / n), 1e-10 * w_want[k]);
  }
  // tau = 1 is proportional with unit weights; large tau approaches uniform.
  EXPECT_TRUE(
      torch::allclose(sgdx::data::scalarization_weights(kSkewed, 1.0), torch::ones({4}, torch::kDouble)));
  EXPECT_NEAR(sgdx::data::temperature_probs(kSkewed, 1e6)[3].item<double>(), 0.25, 1e-4);
}

TEST(Temperature, VarianceFactorIsOneAtTauOneAndGrows) {
  EXPECT_NEAR(sgdx::data::variance_factor(kSkewed, 1.0), 1.0, 1e-12);
  double prev = 1.0;
  for (double tau : {1.5, 2.0, 3.0, 5.0, 100.0}) {
    const double f = sgdx::data::variance_factor(kSkewed, tau);
    EXPECT_GE(f, prev) << tau;
    prev = f;
  }
  const auto summary = sgdx::data::temperature_summary(kSkewed, 5.0);
  EXPECT_NE(summary.find("F(5) ="), std::string::npos) << summary;
  EXPECT_NE(summary.find("2733"), std::string::npos);
}

TEST(Temperature, ClearErrors) {
  SGDX_EXPECT_THROW_MSG(sgdx::data::temperature_probs(kSkewed, 0.0), "tau must be > 0 and finite, got 0");
  SGDX_EXPECT_THROW_MSG(sgdx::data::temperature_probs(kSkewed, -2.0), "tau must be > 0 and finite, got -2");
  SGDX_EXPECT_THROW_MSG(sgdx::data::temperature_probs({5, 0, 3}, 2.0), "group 1 is empty");
  SGDX_EXPECT_THROW_MSG(TemperatureSchedule({{0, 5.0}, {100, 1.0}, {50, 2.0}}),
                        "steps must increase, got 100 then 50");
  SGDX_EXPECT_THROW_MSG(TemperatureSchedule({{10, 5.0}}), "must start at step 0, got step 10");
  SGDX_EXPECT_THROW_MSG(TemperatureSchedule({{0, 5.0}, {10, 0.0}}), "tau must be > 0");
  SGDX_EXPECT_THROW_MSG(sgdx::data::group_sizes(torch::tensor({0, 2, 2}, torch::kLong)), "group 1 is empty");
  SGDX_EXPECT_THROW_MSG(sgdx::data::group_sizes(torch::tensor({0, -1}, torch::kLong)),
                        "must be >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(sgdx::data::group_sizes(torch::tensor({0, 1}, torch::kLong), 4), "group 2 is empty");
  SGDX_EXPECT_THROW_MSG(sgdx::data::long_tailed_indices(torch::tensor({0, 1}, torch::kLong), 0.5),
                        "must be >= 1");
}

// Group frequencies of the draws match p(.; tau) (chi-square, 3 dof, 0.999
// quantile 16.27) and members are uniform within a group.
TEST(Temperature, DrawFrequenciesMatchProbabilities) {
  torch::manual_seed(0);
  auto ids = ids_of(kSkewed);
  for (double tau : {1.0, 3.0, 5.0}) {
    TemperatureSampler s(ids, TemperatureSchedule::constant(tau), 11);
    std::vector<double> count(4, 0);
    std::map<size_t, int> tail_member_hits;
    const int batches = 200, b = 100;
    for (auto& batch : draw(s, batches, b)) {
      for (auto i : batch) ++count[ids[static_cast<int64_t>(i)].item<int64_t>()];
    }
    auto p = sgdx::data::temperature_probs(kSkewed, tau);
    double chi2 = 0;
    for (int k = 0; k < 4; ++k) {
      const double e = batches * b * p[k].item<double>();
      chi2 += (count[k] - e) * (count[k] - e) / e;
    }
    EXPECT_LT(chi2, 16.27) << "tau " << tau;
  }
  // Uniform within group 2 (39 members): chi-square with 38 dof, 0.999 quantile 70.7.
  TemperatureSampler s(ids, TemperatureSchedule::constant(100.0), 5);
  std::map<size_t, double> hits;
  double total = 0;
  for (auto& batch : draw(s, 400, 100))
    for (auto i : batch)
      if (ids[static_cast<int64_t>(i)].item<int64_t>() == 2) ++hits[i], ++total;
  ASSERT_EQ(hits.size(), 39u);
  double chi2 = 0;
  for (auto& [i, c] : hits) chi2 += (c - total / 39) * (c - total / 39) / (total / 39);
  EXPECT_LT(chi2, 70.7);
}

// A linear least-squares toy whose groups have different optimal directions.
struct Toy {
  at::Tensor x, y, ids;
  std::vector<int64_t> sizes = {400, 60, 12, 3};
  Toy() {
    torch::manual_seed(1);
    std::vector<at::Tensor> xs, ys, gs;
    for (int k = 0; k < 4; ++k) {
      auto xk = torch::randn({sizes[k], 3}, torch::kDouble) + 2.0 * k;
      xs.push_back(xk);
      ys.push_back(xk.mv(torch::randn({3}, torch::kDouble)) + 3.0 * k);
      gs.push_back(torch::full({sizes[k]}, int64_t(k), torch::kLong));
    }
    x = torch::cat(xs);
    y = torch::cat(ys);
    ids = torch::cat(gs);
  }
  // Per-example gradients of 0.5 (x.w - y)^2 at w.
  at::Tensor grads(const at::Tensor& w) const { return (x.mv(w) - y).unsqueeze(1) * x; }
};

TEST(Temperature, FullBatchScalarizationEqualsTemperatureObjective) {
  Toy t;
  auto w = torch::randn({3}, torch::kDouble).requires_grad_();
  const double tau = 4.0;
  auto per = 0.5 * (t.x.mv(w) - t.y).pow(2);
  // S: mean over the pooled data of w_k * l_i.
  auto weights = sgdx::data::scalarization_weights(t.sizes, tau).index_select(0, t.ids);
  auto gs = torch::autograd::grad({(weights * per).mean()}, {w}, {}, true)[0];
  // TS objective: sum_k p_k * mean_{i in k} l_i.
  auto p = sgdx::data::temperature_probs(t.sizes, tau);
  at::Tensor obj = torch::zeros({}, torch::kDouble);
  for (int k = 0; k < 4; ++k)
    obj = obj + p[k] * per.index_select(0, torch::nonzero(t.ids == k).flatten()).mean();
  auto gt = torch::autograd::grad({obj}, {w})[0];
  EXPECT_TRUE(torch::allclose(gs, gt, 1e-12, 1e-12)) << gs << gt;
}

// Minibatch gradients: both estimators are unbiased for the TS objective, and
// S's variance (trace of the covariance) is at least TS's.
TEST(Temperature, MeasuredVarianceScalarizationAtLeastTemperature) {
  Toy t;
  auto w = torch::zeros({3}, torch::kDouble);
  auto g = t.grads(w);  // [N, 3]
  const double tau = 5.0;
  const int batches = 3000;
  const size_t b = 16;
  auto weights = sgdx::data::scalarization_weights(t.sizes, tau).index_select(0, t.ids);
  auto run = [&](double sample_tau, bool weighted) {
    TemperatureSampler s(t.ids, TemperatureSchedule::constant(sample_tau), 3);
    std::vector<at::Tensor> est;
    for (auto& batch : draw(s, batches, b)) {
      auto idx = torch::tensor(std::vector<int64_t>(batch.begin(), batch.end()), torch::kLong);
      auto gb = g.index_select(0, idx);
      if (weighted) gb = gb * weights.index_select(0, idx).unsqueeze(1);
      est.push_back(gb.mean(0));
    }
    return torch::stack(est);  // [batches, 3]
  };
  auto ts = run(tau, false), sc = run(1.0, true);
  auto p = sgdx::data::temperature_probs(t.sizes, tau);
  at::Tensor truth = torch::zeros({3}, torch::kDouble);
  for (int k = 0; k < 4; ++k) truth += p[k] * g.index_select(0, torch::nonzero(t.ids == k).flatten()).mean(0);
  for (auto* e : {&ts, &sc}) {
    auto se = e->std(0) / std::sqrt(double(batches));
    EXPECT_TRUE(((e->mean(0) - truth).abs() <= 5 * se + 1e-12).all().item<bool>()) << e->mean(0) << truth;
  }
  const double var_ts = ts.var(0).sum().item<double>(), var_s = sc.var(0).sum().item<double>();
  EXPECT_GT(var_s, var_ts) << "S " << var_s << " TS " << var_ts;
}

TEST(Temperature, ScheduleSwitchesExactlyAtTheStepAcrossEpochsAndSaveLoad) {
  torch::manual_seed(2);
  auto ids = ids_of({50, 30, 20});  // N = 100; batches of 8 -> 13 per epoch
  auto sched = TemperatureSchedule::cooldown(40, 5.0, 1.0);
  EXPECT_EQ(sched.at(19), 5.0);
  EXPECT_EQ(sched.at(20), 1.0);
  TemperatureSampler a(ids, sched, 9);
  std::vector<double> taus;
  std::vector<std::vector<size_t>> full;
  while (a.step() < 40) {
    const double tau = a.current_tau();  // the tau of the batch about to be drawn
    auto x = a.next(8);
    if (!x) {
      a.reset();
      continue;
    }
    taus.push_back(tau);
    full.push_back(*x);
  }
  ASSERT_EQ(full.size(), 40u);
  for (int s = 0; s < 40; ++s) EXPECT_EQ(taus[s], s < 20 ? 5.0 : 1.0) << s;  // mid-epoch switch at step 20
  // The draws themselves: batch s equals batch s of a constant-tau sampler with the same seed.
  auto hot = draw(TemperatureSampler(ids, TemperatureSchedule::constant(5.0), 9), 40, 8);
  auto cold = draw(TemperatureSampler(ids, TemperatureSchedule::constant(1.0), 9), 40, 8);
  for (int s = 0; s < 40; ++s) EXPECT_EQ(full[s], s < 20 ? hot[s] : cold[s]) << s;
  int differ = 0;
  for (int s = 0; s < 40; ++s) differ += hot[s] != cold[s];
  EXPECT_GE(differ, 20);  // the check above can tell the temperatures apart (30 of 40 differ)
  // Resume from a checkpoint taken at step 17 (mid-epoch) in a fresh sampler.
  TemperatureSampler b(ids, sched, 9);
  std::vector<std::vector<size_t>> resumed;
  while (b.step() < 17) {
    auto x = b.next(8);
    if (!x) {
      b.reset();
      continue;
    }
    resumed.push_back(*x);
  }
  std::ostringstream buf;
  {
    torch::serialize::OutputArchive ar;
    b.save(ar);
    ar.save_to(buf);
  }
  TemperatureSampler c(ids, TemperatureSchedule::constant(3.0), 0);  // load restores schedule and seed
  {
    std::istringstream in(buf.str());
    torch::serialize::InputArchive ar;
    ar.load_from(in);
    c.load(ar);
  }
  while (c.step() < 40) {
    auto x = c.next(8);
    if (!x) {
      c.reset();
      continue;
    }
    resumed.push_back(*x);
  }
  EXPECT_EQ(resumed, full);
  // A sampler for other groups refuses the checkpoint.
  TemperatureSampler other(ids_of({40, 40, 20}), sched, 9);
  std::istringstream in(buf.str());
  torch::serialize::InputArchive ar;
  ar.load_from(in);
  SGDX_EXPECT_THROW_MSG(other.load(ar), "saved group sizes");
}

TEST(Temperature, WorksInsideTheDataLoaderWithWorkers) {
  auto ids = ids_of({60, 30, 10});
  auto data = torch::arange(100, torch::kLong);
  struct DS : torch::data::datasets::Dataset<DS, torch::data::Example<at::Tensor, at::Tensor>> {
    at::Tensor ids;
    explicit DS(at::Tensor i) : ids(std::move(i)) {}
    torch::data::Example<at::Tensor, at::Tensor> get(size_t i) override {
      return {torch::tensor(int64_t(i)), ids[static_cast<int64_t>(i)]};
    }
    std::optional<size_t> size() const override { return ids.numel(); }
  };
  TemperatureSampler handle(ids, TemperatureSchedule::constant(2.0), 4, /*batches_per_epoch=*/5);
  auto loader = torch::data::make_data_loader(DS(ids), handle, torch::data::DataLoaderOptions(10).workers(2));
  // Same draws as a fresh sampler with the same seed, whatever the workers did.
  auto expected = draw(TemperatureSampler(ids, TemperatureSchedule::constant(2.0), 4, 5), 5, 10);
  std::multiset<int64_t> got, want;
  int batches = 0;
  for (auto& batch : *loader) {
    ++batches;
    for (auto& ex : batch) got.insert(ex.data.item<int64_t>());
  }
  for (auto& b : expected) want.insert(b.begin(), b.end());
  EXPECT_EQ(batches, 5);
  EXPECT_EQ(got, want);
  EXPECT_EQ(handle.step(), 5);  // the handle sees the loader's progress
}

TEST(Temperature, LongTailedSubsetIsGeometricAndSeeded) {
  auto labels = torch::arange(10, torch::kLong).repeat_interleave(500);
  auto idx = sgdx::data::long_tailed_indices(labels, 100.0, 3);
  auto counts = torch::bincount(labels.index_select(0, idx), {}, 10);
  for (int c = 0; c < 10; ++c) {
    EXPECT_EQ(counts[c].item<int64_t>(),
              static_cast<int64_t>(std::floor(500 * std::pow(100.0, -c / 9.0) + 1e-9)))
        << c;
  }
  EXPECT_EQ(counts[0].item<int64_t>(), 500);
  EXPECT_EQ(counts[9].item<int64_t>(), 5);
  EXPECT_TRUE(torch::equal(idx, sgdx::data::long_tailed_indices(labels, 100.0, 3)));
  EXPECT_FALSE(torch::equal(idx, sgdx::data::long_tailed_indices(labels, 100.0, 4)));
  EXPECT_EQ(std::get<0>(torch::unique_consecutive(idx)).numel(), idx.numel());  // sorted, no repeats
  auto short_class = torch::cat({torch::zeros({100}, torch::kLong), torch::ones({10}, torch::kLong)});
  SGDX_EXPECT_THROW_MSG(sgdx::data::long_tailed_indices(short_class, 2.0),
                        "class 1 has 10 examples but needs 50");
}

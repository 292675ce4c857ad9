// Distributed samplers against independent references: the one-process samplers
// fed the same gathered updates, a float64 brute-force score table, chi-square and
// binomial tests (false-alarm rate 1e-3 each, stated at each test), and exact
// coverage counts for the shard sampler.
#include "sgdx/data/distributed.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "dist/dist_harness.h"
#include "sgdx/dist/communicator.h"
#include "test_util.h"

namespace {

using sgdx::data::DistributedImportanceOptions;
using sgdx::data::DistributedImportanceSampler;
using sgdx::data::DistributedShardSampler;
using sgdx::data::DistributedTemperatureSampler;
using sgdx::data::ImportanceBatch;
using sgdx::data::ImportanceSampler;
using sgdx::data::TemperatureSampler;
using sgdx::data::TemperatureSchedule;

DistributedImportanceOptions dopts(double mix, uint64_t seed, int64_t lag = 0) {
  DistributedImportanceOptions o;
  o.mix = mix;
  o.seed = seed;
  o.lag = lag;
  o.batches_per_epoch = 1 << 20;
  return o;
}

sgdx::data::ImportanceSamplerOptions iopts(double mix, uint64_t seed) {
  sgdx::data::ImportanceSamplerOptions o;
  o.mix = mix;
  o.seed = seed;
  o.batches_per_epoch = 1 << 20;
  return o;
}

/// The score rank `rank` reports for example `index` at step `step` (depends on the
/// rank, so the order in which ranks' updates are applied matters).
double score_of(int64_t step, int64_t rank, int64_t index) {
  return 0.1 + double((index * 7 + step * 13 + rank * 5) % 17) / 4.0;
}

at::Tensor scores_for(int64_t step, int64_t rank, const std::vector<int64_t>& indices) {
  auto out = at::empty({int64_t(indices.size())}, at::kDouble);
  for (size_t k = 0; k < indices.size(); ++k) out.data_ptr<double>()[k] = score_of(step, rank, indices[k]);
  return out;
}

/// A float64 score table updated entry by entry: the brute-force reference.
struct BruteTable {
  std::vector<double> s;
  double mix;
  BruteTable(int64_t n, double mix) : s(size_t(n), 1.0), mix(mix) {}
  void update(const std::vector<int64_t>& idx, const at::Tensor& sc, double beta) {
    std::vector<double> next(idx.size());
    for (size_t k = 0; k < idx.size(); ++k)
      next[k] = beta * s[idx[k]] + (1 - beta) * sc[int64_t(k)].item<double>();
    for (size_t k = 0; k < idx.size(); ++k) s[idx[k]] = next[k];
  }
  double p(int64_t i) const {
    double total = 0;
    for (double v : s) total += v;
    return (1 - mix) * s[i] / total + mix / double(s.size());
  }
};

double chi2(const std::vector<double>& counts, const std::vector<double>& p) {
  double total = 0, x = 0;
  for (double c : counts) total += c;
  for (size_t i = 0; i < counts.size(); ++i) {
    const double e = total * p[i];
    x += (counts[i] - e) * (counts[i] - e) / e;
  }
  return x;
}

std::vector<int64_t> row(const at::Tensor& t) {
  auto c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

std::string to_bytes(const torch::data::samplers::Sampler<>& s) {
  std::ostringstream buf;
  torch::serialize::OutputArchive ar;
  s.save(ar);
  ar.save_to(buf);
  return buf.str();
}

void from_bytes(torch::data::samplers::Sampler<>& s, const std::string& bytes) {
  std::istringstream in(bytes);
  torch::serialize::InputArchive ar;
  ar.load_from(in);
  s.load(ar);
}

// ------------------------------------------------------------ one process

TEST(DistImportanceSingle, WorldOfOneEqualsTheOneProcessSampler) {
  const int64_t n = 50, b = 8;
  DistributedImportanceSampler d(n, sgdx::dist::single_process(), dopts(0.2, 17));
  ImportanceSampler ref(n, iopts(0.2, 17));
  for (int64_t step = 0; step < 30; ++step) {
    d.next(b);
    ref.next(b);
    // Updates reach the table lazily, at the draw that needs them.
    ASSERT_TRUE(d.probabilities(torch::arange(n)).equal(ref.probabilities(torch::arange(n)))) << step;
    const auto bd = d.take(), br = ref.take();
    ASSERT_EQ(bd.indices, br.indices) << step;
    ASSERT_TRUE(bd.weights.equal(br.weights)) << step;
    EXPECT_EQ(bd.sequence, step);
    const auto sc = scores_for(step, 0, bd.indices);
    d.update(bd, sc, 0.3);
    ref.update(torch::tensor(br.indices, torch::kLong), sc, 0.3);
  }
}

// Batch s's weights are 1/(N p) of the brute-force table holding the updates of
// batches 0..s-1-lag, for a loader drawing `lag` batches ahead.
TEST(DistImportanceSingle, PrefetchRuleUsesTheTableOfBatchSMinusOneMinusLag) {
  const int64_t n = 30, b = 5;
  for (int64_t lag : {0, 1, 3}) {
    DistributedImportanceSampler d(n, sgdx::dist::single_process(), dopts(0.1, 5, lag));
    BruteTable table(n, 0.1);
    std::vector<std::vector<double>> snapshots = {table.s};   // snapshots[k]: updates of batches < k
    for (int64_t ahead = 0; ahead < lag; ++ahead) d.next(b);  // the loader's prefetch
    for (int64_t step = 0; step < 20; ++step) {
      d.next(b);
      const auto batch = d.take();
      ASSERT_EQ(batch.sequence, step);
      BruteTable at_draw(n, 0.1);
      at_draw.s = snapshots[std::max<int64_t>(0, step - lag)];
      for (int64_t j = 0; j < b; ++j) {
        const double expect = 1.0 / (double(n) * at_draw.p(batch.indices[j]));
        EXPECT_NEAR(batch.weights[j].item<double>(), expect, 1e-6 * expect)
            << "lag " << lag << " step " << step;
      }
      const auto sc = scores_for(step, 0, batch.indices);
      d.update(batch, sc, 0.5);
      table.update(batch.indices, sc, 0.5);
      snapshots.push_back(table.s);
    }
    EXPECT_EQ(d.applied_updates(), 19) << "the last draw, batch 19 + lag, holds batches 0..18";
  }
}

TEST(DistImportanceSingle, DrawingPastTheLagThrowsNamingTheLagNeeded) {
  DistributedImportanceSampler d(10, sgdx::dist::single_process(), dopts(0.1, 1, /*lag=*/1));
  d.next(4);
  d.next(4);  // batch 1 needs no update (1 - 1 - 1 < 0)
  SGDX_EXPECT_THROW_MSG(d.next(4), "batch 0's update has not arrived");
  SGDX_EXPECT_THROW_MSG(d.next(4), "here lag >= 2");
  SGDX_EXPECT_THROW_MSG(d.update(torch::tensor({1}), torch::tensor({1.0})), "batch 0 has not been taken yet");
  auto b0 = d.take();
  auto b1 = d.take();
  SGDX_EXPECT_THROW_MSG(d.update(b1, torch::ones({4}, torch::kDouble)), "expected batch 0's, got batch 1's");
  SGDX_EXPECT_THROW_MSG(d.update(b0, torch::full({4}, -1.0, torch::kDouble)),
                        "must be finite and >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(d.update(b0, torch::ones({4}), 1.0), "beta must be in [0, 1), got 1");
  d.update(b0, torch::ones({4}, torch::kDouble));  // a refused update changed nothing
  EXPECT_EQ(d.applied_updates(), 0);
  EXPECT_TRUE(d.next(4).has_value());
  EXPECT_EQ(d.applied_updates(), 1);
  SGDX_EXPECT_THROW_MSG(DistributedImportanceSampler(10, sgdx::dist::single_process(), dopts(0.0, 1)),
                        "mix (eps) must be in (0, 1], got 0");
  SGDX_EXPECT_THROW_MSG(DistributedImportanceSampler(10, sgdx::dist::single_process(), dopts(0.1, 1, -2)),
                        "lag must be >= 0, got -2");
}

TEST(DistImportanceSingle, SaveWithBatchesDrawnAheadThenLoadResumesExactly) {
  const int64_t n = 40, b = 6, lag = 2;
  auto comm = sgdx::dist::single_process();
  auto step = [&](DistributedImportanceSampler& s, std::vector<ImportanceBatch>& out) {
    auto batch = s.take();
    s.update(batch, scores_for(batch.sequence, 0, batch.indices), 0.25);
    s.next(b);  // keep lag + 1 batches in the loader's queue
    out.push_back(batch);
  };
  DistributedImportanceSampler full(n, comm, dopts(0.15, 8, lag));
  DistributedImportanceSampler a(n, comm, dopts(0.15, 8, lag));
  std::vector<ImportanceBatch> f, r;
  for (int k = 0; k <= lag; ++k) full.next(b), a.next(b);
  for (int k = 0; k < 25; ++k) step(full, f);
  for (int k = 0; k < 11; ++k) step(a, r);
  const auto bytes = to_bytes(a);
  DistributedImportanceSampler c(n, comm, dopts(0.15, 8, lag));
  from_bytes(c, bytes);
  EXPECT_EQ(c.taken(), 11);
  for (int k = 0; k <= lag; ++k) c.next(b);  // a new loader draws ahead again
  for (int k = 11; k < 25; ++k) step(c, r);
  ASSERT_EQ(r.size(), f.size());
  for (size_t k = 0; k < f.size(); ++k) {
    EXPECT_EQ(r[k].sequence, f[k].sequence);
    EXPECT_EQ(r[k].indices, f[k].indices) << k;
    EXPECT_TRUE(r[k].weights.equal(f[k].weights)) << k;
  }
  EXPECT_TRUE(c.scores().equal(full.scores()));
  DistributedImportanceSampler other_lag(n, comm, dopts(0.15, 8, 1));
  SGDX_EXPECT_THROW_MSG(from_bytes(other_lag, bytes), "the checkpoint has lag 2, this sampler 1");
  DistributedImportanceSampler other_size(n + 1, comm, dopts(0.15, 8, lag));
  SGDX_EXPECT_THROW_MSG(from_bytes(other_size, bytes), "the checkpoint has 40 examples, this sampler 41");
}

TEST(DistImportanceSingle, ResetHandsUntakenBatchesOutAgainUnchanged) {
  DistributedImportanceSampler d(20, sgdx::dist::single_process(), dopts(0.3, 2, /*lag=*/2));
  const auto first = *d.next(4);
  const auto second = *d.next(4);
  d.reset();  // a new epoch: the loader dropped both
  EXPECT_EQ(*d.next(4), first);
  EXPECT_EQ(*d.next(4), second);
  EXPECT_EQ(d.take().sequence, 0);
  EXPECT_EQ(d.take().sequence, 1);
}

TEST(DistImportanceSingle, DefaultEpochIsNOverWorldTimesBatch) {
  DistributedImportanceOptions o;
  DistributedImportanceSampler d(21, sgdx::dist::single_process(), o);
  int batches = 0;
  while (d.next(5)) {
    auto batch = d.take();
    d.update(batch, torch::ones({5}, torch::kDouble));
    ++batches;
  }
  EXPECT_EQ(batches, 5);  // ceil(21 / (1 * 5))
}

// ------------------------------------------------------------------ shard

/// Every rank's epoch from the sampler, checked for exact coverage.
void check_shard_coverage(int64_t n, int64_t world, bool drop_last, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> count(size_t(n), 0);
  int64_t per_rank = -1;
  for (int64_t r = 0; r < world; ++r) {
    DistributedShardSampler s(n, r, world, seed, true, drop_last);
    s.set_epoch(epoch);
    s.reset();
    std::vector<int64_t> got;
    while (auto batch = s.next(3)) got.insert(got.end(), batch->begin(), batch->end());
    if (per_rank < 0) per_rank = int64_t(got.size());
    EXPECT_EQ(int64_t(got.size()), per_rank) << "every rank yields as many";
    for (auto i : got) ++count[size_t(i)];
  }
  const int64_t expect_total = drop_last ? world * (n / world) : world * ((n + world - 1) / world);
  EXPECT_EQ(per_rank * world, expect_total);
  int64_t seen = 0, twice = 0;
  for (auto c : count) {
    EXPECT_LE(c, 2);
    seen += c > 0;
    twice += c == 2;
  }
  EXPECT_EQ(twice, drop_last ? 0 : expect_total - n) << "padding is exactly the shortfall";
  EXPECT_EQ(seen, drop_last ? expect_total : n) << "no index missing (drop_last: exactly N - N mod world)";
}

TEST(DistShard, EveryIndexOncePerEpochAcrossRanksOrDocumentedPadding) {
  for (int64_t n : {1, 7, 12, 13})
    for (int64_t world : {1, 2, 3, 4})
      for (bool drop : {false, true}) {
        if (n < world) continue;  // padding would repeat indices more than twice
        for (int64_t epoch : {0, 5}) check_shard_coverage(n, world, drop, 3, epoch);
      }
}

// Over 4800 epochs the 24 permutations of N = 4 are equally frequent: chi-square,
// 23 df, two-sided at total false-alarm rate 1e-3 (0.0005 and 0.9995 quantiles
// 6.92 and 52.00; too good a fit would mean the epochs' permutations are not independent).
TEST(DistShard, PermutationIsDeterministicPerEpochAndUniform) {
  DistributedShardSampler a(4, 0, 1, 11), b(4, 0, 1, 11), c(4, 0, 1, 12);
  std::vector<double> counts(24, 0);
  int same_as_other_seed = 0;
  for (int64_t e = 0; e < 4800; ++e) {
    a.set_epoch(e), b.set_epoch(e), c.set_epoch(e);
    a.reset(), b.reset(), c.reset();
    ASSERT_EQ(a.indices(), b.indices());
    same_as_other_seed += a.indices() == c.indices();
    auto perm = a.indices();
    auto sorted = perm;
    std::sort(sorted.begin(), sorted.end());
    ASSERT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3}));
    // Lehmer code: the permutation's rank in 0..23.
    int64_t code = 0;
    for (size_t i = 0; i < 4; ++i) {
      int64_t smaller = 0;
      for (size_t j = i + 1; j < 4; ++j) smaller += perm[j] < perm[i];
      code = code * int64_t(4 - i) + smaller;
    }
    counts[size_t(code)] += 1;
  }
  const double x = chi2(counts, std::vector<double>(24, 1.0 / 24));
  std::printf("shard: permutation chi-square %.2f (23 df, accept (6.92, 52.00))\n", x);
  EXPECT_GT(x, 6.92);
  EXPECT_LT(x, 52.00);
  EXPECT_LT(same_as_other_seed, 400);  // 4800 / 24 = 200 expected
  DistributedShardSampler plain(7, 1, 3, 0, /*shuffle=*/false);
  EXPECT_EQ(plain.indices(), (std::vector<int64_t>{1, 4, 0}));  // padded with position 7 -> 0
}

struct IndexDataset
    : torch::data::datasets::Dataset<IndexDataset, torch::data::Example<at::Tensor, at::Tensor>> {
  torch::data::Example<at::Tensor, at::Tensor> get(size_t i) override {
    return {torch::tensor(int64_t(i)), torch::tensor(int64_t(i))};
  }
  std::optional<size_t> size() const override { return 200; }
};

/// Trains 30 batches through a LibTorch DataLoader with 2 workers (max_jobs 4).
int64_t run_loader(int64_t lag) {
  auto o = dopts(0.2, 9, lag);
  o.batches_per_epoch = 30;
  DistributedImportanceSampler handle(200, sgdx::dist::single_process(), o);
  auto loader =
      torch::data::make_data_loader(IndexDataset(), handle, torch::data::DataLoaderOptions(8).workers(2));
  int64_t batches = 0;
  for (auto& batch : *loader) {
    auto b = handle.take();
    EXPECT_EQ(b.indices.size(), batch.size());
    for (size_t j = 0; j < batch.size(); ++j) EXPECT_EQ(batch[j].data.item<int64_t>(), b.indices[j]);
    EXPECT_EQ(b.sequence, batches);
    handle.update(b, scores_for(b.sequence, 0, b.indices), 0.5);
    ++batches;
  }
  return batches;
}

/// The loader draws max_jobs batches beyond the one being trained on: lag 4 works
/// and every batch it yields is the one take() returns; lag 3 is refused by name.
TEST(DistImportanceSingle, DataLoaderWithWorkersNeedsLagMaxJobs) {
  EXPECT_EQ(run_loader(4), 30);
  SGDX_EXPECT_THROW_MSG(run_loader(3), "here lag >= 4");
}

TEST(DistShard, SaveLoadResumesMidEpochAndChecksSettings) {
  DistributedShardSampler a(50, 1, 3, 9);
  a.set_epoch(4);
  a.reset();
  a.next(5);
  a.next(5);
  const auto bytes = to_bytes(a);
  const auto rest = *a.next(5);
  DistributedShardSampler b(50, 1, 3, 9);
  from_bytes(b, bytes);
  EXPECT_EQ(b.epoch(), 4);
  EXPECT_EQ(*b.next(5), rest);
  DistributedShardSampler other(50, 1, 2, 9);
  SGDX_EXPECT_THROW_MSG(from_bytes(other, bytes), "differ from this sampler's");
  SGDX_EXPECT_THROW_MSG(DistributedShardSampler(5, 3, 3), "rank 3 out of range [0, 3)");
}

// ------------------------------------------------------------ temperature

TEST(DistTemperatureSingle, WorldOfOneEqualsTheOneProcessSampler) {
  const auto ids = torch::tensor({0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 1}, torch::kLong);
  const auto sched = TemperatureSchedule::cooldown(10);
  DistributedTemperatureSampler d(ids, sched, sgdx::dist::single_process(), 6);
  TemperatureSampler ref(ids, sched, 6, 1 << 20);
  int batches = 0;
  while (auto got = d.next(4)) {
    EXPECT_EQ(*got, *ref.next(4));
    ++batches;
  }
  EXPECT_EQ(batches, 3);  // ceil(12 / (1 * 4))
  d.reset();
  for (int k = 0; k < 3; ++k) EXPECT_EQ(*d.next(4), *ref.next(4));
  EXPECT_EQ(d.step(), 6);
}

TEST(DistPresamplerSingle, WorldOfOneEqualsNoCommunicator) {
  sgdx::data::Presampler a(4, 3, 0.1, 0.5, 7), b(4, 3, 0.1, 0.5, 7);
  b.set_communicator(sgdx::dist::single_process());
  const auto sc = torch::arange(12, torch::kDouble).pow(2) + 0.5;
  a.update_tau(sc);
  b.update_tau(sc);
  EXPECT_EQ(a.tau(), b.tau());
  const auto [pa, wa] = a.select(sc);
  const auto [pb, wb] = b.select(sc);
  EXPECT_TRUE(pa.equal(pb));
  EXPECT_TRUE(wa.equal(wb));
}

// ---------------------------------------------------------------- W ranks

/// Tables bit-identical across ranks every step; rank 0 draws what a one-process
/// ImportanceSampler fed every rank's updates in rank order draws; every rank's
/// weights are 1/(N p) of the brute-force table; the ranks' streams differ.
void check_importance_matches_one_process() {
  auto comm = sgdx::testing::rank_comm_ptr();
  const int64_t r = comm->rank(), w = comm->world_size(), n = 40, b = 6, steps = 25;
  DistributedImportanceSampler d(n, comm, dopts(0.2, 21));
  ImportanceSampler ref(n, iopts(0.2, 21));
  BruteTable table(n, 0.2);
  int64_t differ_from_rank0 = 0;
  for (int64_t step = 0; step < steps; ++step) {
    d.next(b);
    ref.next(b);
    // The table of this draw: bit-identical on every rank and to the one process.
    const auto tables = comm->all_gather(d.scores());
    for (int64_t k = 1; k < w; ++k)
      ASSERT_TRUE(tables[k].equal(tables[0])) << "rank " << k << " step " << step;
    ASSERT_TRUE(d.probabilities(torch::arange(n)).equal(ref.probabilities(torch::arange(n)))) << step;
    const auto mine = d.take(), one = ref.take();
    if (r == 0) {
      EXPECT_EQ(mine.indices, one.indices) << step;
      EXPECT_TRUE(mine.weights.equal(one.weights)) << step;
    }
    for (int64_t j = 0; j < b; ++j) {
      const double expect = 1.0 / (double(n) * table.p(mine.indices[j]));
      EXPECT_NEAR(mine.weights[j].item<double>(), expect, 1e-6 * expect) << step;
    }
    d.update(mine, scores_for(step, r, mine.indices), 0.5);
    const auto all = comm->all_gather(torch::tensor(mine.indices, torch::kLong));
    for (int64_t k = 0; k < w; ++k) {
      const auto idx = row(all[k]);
      ref.update(all[k], scores_for(step, k, idx), 0.5);
      table.update(idx, scores_for(step, k, idx), 0.5);
      if (k > 0 && r == 0) differ_from_rank0 += idx != mine.indices;
    }
  }
  if (r == 0) EXPECT_GT(differ_from_rank0, (w - 1) * steps / 2) << "ranks must draw independently";
}

TEST(DistImportance, TwoRanksTablesIdenticalAndEqualOneProcess) {
  SGDX_AS_RANKS(2);
  check_importance_matches_one_process();
}
TEST(DistImportance, ThreeRanksTablesIdenticalAndEqualOneProcess) {
  SGDX_AS_RANKS(3);
  check_importance_matches_one_process();
}

/// The union over ranks of 400 steps of b = 10 follows p: chi-square with 19 df,
/// 0.999 quantile 43.82. Rank 0 and rank 1 pick the same example at the same
/// position with probability q = sum p^2: two-sided binomial z-test at 3.29
/// (independent streams). False-alarm rate 1e-3 each.
void check_union_follows_p() {
  auto comm = sgdx::testing::rank_comm_ptr();
  const int64_t r = comm->rank(), w = comm->world_size(), n = 20, b = 10, steps = 400;
  DistributedImportanceSampler d(n, comm, dopts(0.1, 33));
  d.next(b);
  d.take();
  // Only rank 0 scores (i + 1)^1.5; the other ranks send nothing.
  if (r == 0) {
    d.update(torch::arange(n), (torch::arange(n, torch::kDouble) + 1).pow(1.5));
  } else {
    d.update(torch::empty({0}, torch::kLong), torch::empty({0}, torch::kDouble));
  }
  auto counts = torch::zeros({n}, torch::kDouble);
  int64_t matches = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    const auto got = *d.next(b);
    const auto batch = d.take();
    for (auto i : got) counts[int64_t(i)] += 1;
    const auto all = comm->all_gather(torch::tensor(batch.indices, torch::kLong));
    for (int64_t j = 0; j < b; ++j) matches += all[0][j].item<int64_t>() == all[1][j].item<int64_t>();
    d.update(torch::empty({0}, torch::kLong), torch::empty({0}, torch::kDouble));
  }
  std::vector<at::Tensor> c = {counts};
  comm->all_reduce_sum(c);
  const auto p_t = d.probabilities(torch::arange(n));
  std::vector<double> p(static_cast<size_t>(n)), obs(static_cast<size_t>(n));
  double q = 0;
  for (int64_t i = 0; i < n; ++i) {
    // Independent of the sampler: the closed form of the table.
    const double si = std::pow(double(i + 1), 1.5);
    double total = 0;
    for (int64_t k = 0; k < n; ++k) total += std::pow(double(k + 1), 1.5);
    p[i] = 0.9 * si / total + 0.1 / double(n);
    EXPECT_NEAR(p_t[i].item<double>(), p[i], 1e-14);
    obs[i] = c[0][i].item<double>();
    q += p[i] * p[i];
  }
  const double x = chi2(obs, p);
  const double m = double(steps * b), z = (double(matches) - m * q) / std::sqrt(m * q * (1 - q));
  std::printf(
      "rank %lld of %lld: union of %lld draws, chi-square %.2f (19 df, 0.999 quantile 43.82); rank0/rank1 "
      "coincidences %lld, expected %.1f, z = %.2f\n",
      (long long)r, (long long)w, (long long)(w * steps * b), x, (long long)matches, m * q, z);
  EXPECT_LT(x, 43.82);
  EXPECT_LT(std::abs(z), 3.29);
}

TEST(DistImportance, TwoRanksUnionFollowsP) {
  SGDX_AS_RANKS(2);
  check_union_follows_p();
}
TEST(DistImportance, ThreeRanksUnionFollowsP) {
  SGDX_AS_RANKS(3);
  check_union_follows_p();
}

/// Rank 0 saves mid-run with batches drawn ahead (lag 1); every rank loads rank 0's
/// file and continues exactly as the uninterrupted run.
void check_save_on_rank0_load_everywhere() {
  auto comm = sgdx::testing::rank_comm_ptr();
  const int64_t r = comm->rank(), n = 30, b = 4, lag = 1;
  const std::string path = std::string("/tmp/sgdx-dis-") + std::getenv("MASTER_PORT") + ".pt";
  auto step = [&](DistributedImportanceSampler& s, std::vector<ImportanceBatch>& out) {
    auto batch = s.take();
    s.update(batch, scores_for(batch.sequence, r, batch.indices), 0.4);
    s.next(b);
    out.push_back(batch);
  };
  DistributedImportanceSampler full(n, comm, dopts(0.2, 4, lag)), a(n, comm, dopts(0.2, 4, lag));
  std::vector<ImportanceBatch> f, got;
  for (int k = 0; k <= lag; ++k) full.next(b), a.next(b);
  for (int k = 0; k < 12; ++k) step(full, f), step(a, got);
  if (r == 0) {
    torch::serialize::OutputArchive ar;
    a.save(ar);
    ar.save_to(path);
  }
  comm->barrier();
  DistributedImportanceSampler c(n, comm, dopts(0.2, 4, lag));
  {
    torch::serialize::InputArchive ar;
    ar.load_from(path);
    c.load(ar);
  }
  comm->barrier();
  if (r == 0) std::remove(path.c_str());
  std::vector<ImportanceBatch> cf, cg;
  for (int k = 0; k <= lag; ++k) c.next(b);
  for (int k = 0; k < 10; ++k) step(full, cf), step(c, cg);
  for (size_t k = 0; k < cf.size(); ++k) {
    EXPECT_EQ(cg[k].sequence, cf[k].sequence);
    EXPECT_EQ(cg[k].indices, cf[k].indices) << "rank " << r << " step " << k;
    EXPECT_TRUE(cg[k].weights.equal(cf[k].weights));
  }
  EXPECT_TRUE(c.scores().equal(full.scores()));
}

TEST(DistImportance, TwoRanksSaveOnRankZeroLoadEverywhere) {
  SGDX_AS_RANKS(2);
  check_save_on_rank0_load_everywhere();
}
TEST(DistImportance, ThreeRanksSaveOnRankZeroLoadEverywhere) {
  SGDX_AS_RANKS(3);
  check_save_on_rank0_load_everywhere();
}

TEST(DistImportance, ARefusedUpdateOnOneRankThrowsOnEveryRankWithoutHanging) {
  SGDX_AS_RANKS(2);
  auto comm = sgdx::testing::rank_comm_ptr();
  DistributedImportanceSampler d(10, comm, dopts(0.1, 1));
  d.next(2);
  const auto batch = d.take();
  const double bad = comm->rank() == 1 ? std::nan("") : 1.0;
  SGDX_EXPECT_THROW_MSG(d.update(batch, torch::full({2}, bad, torch::kDouble)),
                        comm->rank() == 1 ? "must be finite" : "rank 1 refused its update");
  d.update(batch, torch::ones({2}, torch::kDouble), 0.0);
  EXPECT_EQ(d.next(2).has_value(), true);
}

/// Every rank uses the same tau at every step and switches at the same step (the
/// Cooldown at 10 of 20); rank 0 draws what TemperatureSampler draws; ranks differ.
void check_temperature() {
  auto comm = sgdx::testing::rank_comm_ptr();
  const int64_t r = comm->rank(), w = comm->world_size();
  auto ids =
      torch::arange(60, torch::kLong).remainder(4).clamp_max(2);  // sizes 30, 10, 20 after the next line
  ids.narrow(0, 0, 20).fill_(0);
  const auto sched = TemperatureSchedule::cooldown(20, 5.0, 1.0);
  DistributedTemperatureSampler d(ids, sched, comm, 13, /*batches_per_epoch=*/1000);
  TemperatureSampler ref(ids, sched, 13, 1000);
  int64_t differ = 0;
  for (int64_t step = 0; step < 20; ++step) {
    const double tau = d.current_tau();
    EXPECT_EQ(tau, step < 10 ? 5.0 : 1.0);
    const auto taus = comm->all_gather(torch::tensor({tau, double(d.step())}, torch::kDouble));
    for (int64_t k = 0; k < w; ++k) ASSERT_TRUE(taus[k].equal(taus[0])) << "step " << step;
    d.check_agreement();
    const auto got = *d.next(8);
    const auto one = *ref.next(8);
    if (r == 0) EXPECT_EQ(got, one);
    const auto all =
        comm->all_gather(torch::tensor(std::vector<int64_t>(got.begin(), got.end()), torch::kLong));
    differ += !all[w - 1].equal(all[0]);
  }
  EXPECT_GE(differ, 18);
  // A rank out of step is caught on every rank.
  if (r == w - 1) d.next(8);
  SGDX_EXPECT_THROW_MSG(d.check_agreement(), "every rank must draw one batch per step");
}

TEST(DistTemperature, TwoRanksSameTauEveryStep) {
  SGDX_AS_RANKS(2);
  check_temperature();
}
TEST(DistTemperature, ThreeRanksSameTauEveryStep) {
  SGDX_AS_RANKS(3);
  check_temperature();
}

/// Each rank scores its own presample; tau is bit-identical on every rank and
/// equals the EMA of the mean per-rank effective batch increase (float64 brute
/// force); select() on rank 0 equals a one-process Presampler, other ranks differ.
void check_presampler() {
  auto comm = sgdx::testing::rank_comm_ptr();
  const int64_t r = comm->rank(), w = comm->world_size();
  sgdx::data::Presampler ps(4, 3, 0.0, 0.5, 3), solo(4, 3, 0.0, 0.5, 3);
  ps.set_communicator(comm);
  auto scores_of = [](int64_t step, int64_t rank) {
    auto s = torch::empty({12}, torch::kDouble);
    for (int64_t k = 0; k < 12; ++k) s[k] = std::pow(score_of(step, rank, k), 1 + rank);
    return s;
  };
  auto increase = [](const at::Tensor& s) {  // K&F's tau from scratch
    const int64_t B = s.numel();
    double total = 0, num = 0, den = 0;
    for (int64_t k = 0; k < B; ++k) total += s[k].item<double>();
    for (int64_t k = 0; k < B; ++k) {
      const double g = s[k].item<double>() / total;
      num += (g - 1.0 / double(B)) * (g - 1.0 / double(B));
      den += g * g;
    }
    return 1.0 / std::sqrt(1.0 - num / den);
  };
  double tau = 0;
  for (int64_t step = 0; step < 6; ++step) {
    ps.update_tau(scores_of(step, r));
    double mean = 0;
    for (int64_t k = 0; k < w; ++k) mean += increase(scores_of(step, k)) / double(w);
    tau = 0.5 * tau + 0.5 * mean;
    EXPECT_NEAR(ps.tau(), tau, 1e-12 * tau);
    const auto all = comm->all_gather(torch::tensor({ps.tau()}, torch::kDouble));
    for (int64_t k = 0; k < w; ++k) ASSERT_EQ(all[k].item<double>(), all[0].item<double>()) << step;
  }
  const auto sc = scores_of(0, 0);
  const auto [pos, wt] = ps.select(sc);
  const auto [pos1, wt1] = solo.select(sc);
  const auto all = comm->all_gather(pos);
  if (r == 0) EXPECT_TRUE(pos.equal(pos1));
  for (int64_t k = 1; k < w; ++k) EXPECT_FALSE(all[k].equal(all[0])) << "rank " << k;
}

TEST(DistPresampler, TwoRanksAgreeOnTau) {
  SGDX_AS_RANKS(2);
  check_presampler();
}
TEST(DistPresampler, ThreeRanksAgreeOnTau) {
  SGDX_AS_RANKS(3);
  check_presampler();
}

/// With the group's communicator the shards of one epoch cover 0..N-1 exactly once.
TEST(DistShard, ThreeRanksCoverEveryIndexOnce) {
  SGDX_AS_RANKS(3);
  auto& comm = sgdx::testing::rank_comm();
  DistributedShardSampler s(30, comm, 5);
  s.set_epoch(2);
  s.reset();
  const auto all = comm.all_gather(torch::tensor(s.indices(), torch::kLong));
  auto sorted = std::get<0>(all.flatten().sort());
  EXPECT_TRUE(sorted.equal(torch::arange(30)));
}

}  // namespace

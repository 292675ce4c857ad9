// The single-launch CUDA k-means against the ATen op on the CPU (itself tested
// against a float64 brute-force Lloyd in tests/ops/test_kmeans.cpp): well-
// separated blobs of many sizes (n, k, d not multiples of the tiles, one row, one
// feature, one cluster, the kernel's limits), given or drawn initial centroids,
// tol = 0 and tol > 0, empty clusters re-seeded, duplicate rows, grids of 1 and 3
// blocks; determinism; inputs at an odd element offset; empty inputs; the ATen
// fallback when the cooperative launch does not fit; no host sync but the one
// read of the result; the limits and errors. The argument checks run without a
// GPU; the rest skips.
//
// Where the order of float sums differs between the CPU and the GPU, results are
// compared up to near-ties with the tolerances stated below, not bit for bit.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "cuda/cuda_test_util.h"
#include "sgdx/config.h"
#include "sgdx/ops/kmeans.h"
#include "test_util.h"

#if SGDX_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

using sgdx::ops::KMeansBackend;
using sgdx::ops::KMeansOptions;
using sgdx::ops::KMeansResult;

namespace {

// A k-means++ draw near a cumulative-sum boundary may land on either side: the
// squared distances are float32 sums of d <= 1024 squares (worst-case relative
// error (d + 2) 2^-24 ~ 6e-5), summed in a different order on the CPU and the GPU.
constexpr double kPickRel = 1e-4;  // of the total weight
// A row may go to either of two centroids whose distances agree to within the
// rounding of ||c||^2 - 2 x.c in float32 (same bound), relative to ||x||^2 + ||c||^2.
constexpr double kTieRel = 1e-4;
// After such a flip the two clusters' means move by about ||x - c|| / |C|, so the
// later near-ties are looser: 1e-3 covers clusters of >= 3 rows of the blobs below.
constexpr double kFlipRel = 1e-3;

// n points around k well-separated centres in d dims (float32, CPU).
at::Tensor blobs(int64_t n, int64_t k, int64_t d, uint64_t seed) {
  torch::manual_seed(seed);
  auto centres = torch::randn({k, d}) * 20.0;
  auto which = torch::randint(0, k, {n});
  return centres.index_select(0, which) + torch::randn({n, d});
}

// Float64 squared distances [n, k] and the per-pair scale ||x||^2 + ||c||^2.
std::pair<at::Tensor, at::Tensor> dists64(const at::Tensor& x, const at::Tensor& c) {
  auto xd = x.cpu().to(torch::kDouble), cd = c.cpu().to(torch::kDouble);
  auto xx = xd.pow(2).sum(1, true), cc = cd.pow(2).sum(1).unsqueeze(0);
  auto dist = (xx + cc - 2 * xd.mm(cd.t())).clamp_min(0);
  return {dist, xx + cc};
}

// Rows whose assigned centroid is not within `rel` of their nearest one.
int64_t non_ties(const at::Tensor& x, const at::Tensor& c, const at::Tensor& assignment, double rel) {
  auto [dist, scale] = dists64(x, c);
  auto a = assignment.cpu().unsqueeze(1);
  auto gap = dist.gather(1, a) - std::get<0>(dist.min(1, true));
  return (gap > rel * scale.gather(1, a)).sum().item<int64_t>();
}

// The GPU result on its own: counts are its assignment's, every row is at its
// nearest centroid up to a near-tie, the inertia is the assignment's (float32
// row distances: 1e-4 relative).
void expect_consistent(const KMeansResult& r, const at::Tensor& x, int64_t k, const std::string& what) {
  ASSERT_TRUE(r.centroids.is_cuda() && r.assignment.is_cuda() && r.counts.is_cuda()) << what;
  ASSERT_EQ(r.centroids.sizes(), (std::vector<int64_t>{k, x.size(1)})) << what;
  ASSERT_EQ(r.assignment.scalar_type(), torch::kLong) << what;
  EXPECT_TRUE(torch::equal(r.counts.cpu(), torch::bincount(r.assignment.cpu(), {}, k))) << what;
  EXPECT_EQ(non_ties(x, r.centroids, r.assignment, kTieRel), 0) << what;
  auto [dist, scale] = dists64(x, r.centroids);
  const double inertia = dist.gather(1, r.assignment.cpu().unsqueeze(1)).sum().item<double>();
  EXPECT_NEAR(r.inertia, inertia, 1e-4 * inertia + 1e-6) << what;
}

// The GPU result against the ATen one from the same initial centroids. Exact
// where the order of float sums cannot matter; rows that differ must be near-ties.
void expect_agrees(const KMeansResult& gpu, const KMeansResult& cpu, const at::Tensor& x, int64_t k,
                   double tol, const std::string& what) {
  expect_consistent(gpu, x, k, what);
  if (::testing::Test::HasFatalFailure()) return;
  const auto ga = gpu.assignment.cpu(), ca = cpu.assignment.cpu();
  const auto differ = ga.ne(ca);
  const int64_t flips = differ.sum().item<int64_t>();
  if (flips == 0) {
    EXPECT_TRUE(torch::equal(gpu.counts.cpu(), cpu.counts)) << what;
    EXPECT_NEAR(gpu.inertia, cpu.inertia, 1e-4 * cpu.inertia + 1e-6) << what;
    if (gpu.iterations == cpu.iterations) {
      EXPECT_TRUE(torch::allclose(gpu.centroids.cpu(), cpu.centroids, 1e-4, 1e-4)) << what;
    } else {
      // The tolerance test compares a shift with tol * mean variance, both
      // rounded differently: a shift within rounding of the threshold stops one
      // run an iteration before the other, whose last move is then <= the threshold.
      EXPECT_GT(tol, 0.0) << what << ": iterations " << gpu.iterations << " vs " << cpu.iterations;
      EXPECT_LE(std::abs(gpu.iterations - cpu.iterations), 1) << what;
      const double tol_abs = tol * x.to(torch::kDouble).var(0, false).mean().item<double>();
      const double moved = (gpu.centroids.cpu().to(torch::kDouble) - cpu.centroids.to(torch::kDouble))
                               .pow(2)
                               .sum()
                               .item<double>();
      EXPECT_LE(moved, 1.01 * tol_abs + 1e-6) << what;
    }
    return;
  }
  // Some rows went the other way on a near-tie (an earlier flip may have moved the means a little).
  std::cout << "[ near-ties ] " << what << ": " << flips << " rows assigned differently\n";
  EXPECT_LE(flips, std::max<int64_t>(2, x.size(0) / 200)) << what;
  const auto rows = differ.nonzero().flatten();
  const auto xr = x.index_select(0, rows);
  auto [dg, sg] = dists64(xr, gpu.centroids);
  auto [dc, sc] = dists64(xr, cpu.centroids);
  const auto gi = ga.index_select(0, rows).unsqueeze(1), ci = ca.index_select(0, rows).unsqueeze(1);
  const auto gap_g = (dg.gather(1, ci) - dg.gather(1, gi)).abs() / sg.gather(1, gi);
  const auto gap_c = (dc.gather(1, ci) - dc.gather(1, gi)).abs() / sc.gather(1, ci);
  EXPECT_TRUE(at::minimum(gap_g, gap_c).le(kFlipRel).all().item<bool>())
      << what << ": relative gaps under the GPU centroids " << gap_g.flatten() << " and the CPU ones "
      << gap_c.flatten();
  EXPECT_LE((gpu.counts.cpu() - cpu.counts).abs().sum().item<int64_t>(), 2 * flips) << what;
  EXPECT_NEAR(gpu.inertia, cpu.inertia, 1e-3 * cpu.inertia + 1e-6) << what;
}

// The rows of x equal to each row of c (the kernel copies the drawn rows).
std::vector<std::vector<int64_t>> matching_rows(const at::Tensor& x, const at::Tensor& c) {
  const auto xc = x.cpu(), cc = c.cpu();
  std::vector<std::vector<int64_t>> out(c.size(0));
  for (int64_t j = 0; j < c.size(0); ++j) {
    auto idx = xc.eq(cc[j]).all(1).nonzero().flatten();
    for (int64_t t = 0; t < idx.numel(); ++t) out[j].push_back(idx[t].item<int64_t>());
  }
  return out;
}

// The GPU's k-means++ draws (its centroids with max_iters = 0), replayed in
// float64 from its own earlier draws: the first is the uniform one; draw j lands
// on a row whose cumulative-weight interval holds u_j * total up to kPickRel *
// total (uniform again when every weight is 0). Returns the number of draws
// that differ from the ATen op's kmeans_plusplus (near-ties).
int64_t expect_plusplus_law(const at::Tensor& x_in, const at::Tensor& picked, const KMeansOptions& o,
                            const std::string& what) {
  const auto x = x_in.cpu().to(torch::kDouble);
  const int64_t n = x.size(0), k = picked.size(0);
  const auto cands = matching_rows(x_in, picked);
  auto uniform = [&](int64_t j) {
    return std::min<int64_t>(n - 1, static_cast<int64_t>(sgdx::ops::kmeans_uniform(o.seed, o.stream, j) * n));
  };
  std::vector<int64_t> chosen;
  at::Tensor best;
  for (int64_t j = 0; j < k; ++j) {
    if (cands[j].empty()) {
      ADD_FAILURE() << what << ": centroid " << j << " is not a row of x";
      return k;
    }
    int64_t pick = -1;
    if (j > 0) {
      auto dj = (x - x[chosen.back()]).pow(2).sum(1);
      best = best.defined() ? at::minimum(best, dj) : dj;
    }
    const double total = j > 0 ? best.sum().item<double>() : 0.0;
    if (j == 0 || !(total > 0.0)) {
      const auto u = uniform(j);
      for (auto c : cands[j]) pick = c == u ? c : pick;
      EXPECT_GE(pick, 0) << what << ": draw " << j << " should be the uniform row " << u;
    } else {
      const double target = sgdx::ops::kmeans_uniform(o.seed, o.stream, j) * total, eps = kPickRel * total;
      const auto cum = best.cumsum(0);
      for (auto c : cands[j]) {
        const double lo = c > 0 ? cum[c - 1].item<double>() : 0.0, hi = cum[c].item<double>();
        if (pick < 0 && lo <= target + eps && hi >= target - eps) pick = c;
      }
      EXPECT_GE(pick, 0) << what << ": draw " << j << " (row " << cands[j][0]
                         << ") is not near u * total = " << target << " of " << total;
    }
    chosen.push_back(pick >= 0 ? pick : cands[j][0]);
  }
  const auto cpu = sgdx::ops::kmeans_plusplus(x_in.cpu(), k, o.seed, o.stream);
  int64_t differ = 0;
  for (int64_t j = 0; j < k; ++j) {
    const auto c = cpu[j].item<int64_t>();
    differ += std::find(cands[j].begin(), cands[j].end(), c) == cands[j].end();
  }
  return differ;
}

// The ATen op from the GPU's own k-means++ draws: the reference for its Lloyd iterations.
KMeansResult cpu_from(const at::Tensor& x, int64_t k, KMeansOptions o, const at::Tensor& init) {
  o.init = init.cpu();
  o.backend = KMeansBackend::aten;
  return sgdx::ops::kmeans(x.cpu(), k, o);
}

struct GridScope {
  explicit GridScope(int blocks) : prev(sgdx::ops::detail::set_kmeans_cuda_grid_for_testing(blocks)) {}
  ~GridScope() { sgdx::ops::detail::set_kmeans_cuda_grid_for_testing(prev); }
  int prev;
};

}  // namespace

TEST(KMeansCuda, MatchesAtenOnTheSameSeed) {
  SGDX_REQUIRE_CUDA();
  struct Case {
    int64_t n, k, d;
    int grid;  // 0: the co-resident count
  };
  int64_t draws_differing = 0;
  for (auto c : {Case{1, 1, 1, 0}, Case{5, 2, 1, 0}, Case{33, 3, 7, 0}, Case{100, 8, 64, 0},
                 Case{257, 5, 130, 0}, Case{1000, 32, 33, 0}, Case{4096, 32, 512, 0}, Case{4096, 64, 1024, 0},
                 Case{2049, 63, 129, 0}, Case{300, 7, 40, 1}, Case{1000, 16, 200, 3}}) {
    const GridScope grid(c.grid);
    auto x = blobs(c.n, c.k, c.d, 7 + c.n);
    const std::string shape = "n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
                              " d=" + std::to_string(c.d) + " grid=" + std::to_string(c.grid);
    KMeansOptions o;
    o.seed = 11;
    o.stream = static_cast<uint64_t>(c.k);
    o.max_iters = 0;
    sgdx::testing::poison_cuda_cache();
    const auto pp = sgdx::ops::kmeans_cuda(x.cuda(), c.k, o);
    draws_differing += expect_plusplus_law(x, pp.centroids, o, shape);
    for (double tol : {0.0, 1e-4}) {
      for (int iters : {0, 1, 10, 100}) {
        o.max_iters = iters;
        o.tol = tol;
        const std::string what = shape + " tol=" + std::to_string(tol) + " iters=" + std::to_string(iters);
        const auto cpu = cpu_from(x, c.k, o, pp.centroids);
        sgdx::testing::poison_cuda_cache();
        const auto gpu = sgdx::ops::kmeans_cuda(x.cuda(), c.k, o);
        EXPECT_EQ(gpu.backend, KMeansBackend::fused_cuda) << what;
        expect_agrees(gpu, cpu, x, c.k, tol, what);
      }
    }
  }
  // Near-ties are rare on these blobs: almost every draw is the ATen op's.
  EXPECT_LE(draws_differing, 2);
}

TEST(KMeansCuda, GivenInitEmptyClustersAndDuplicates) {
  SGDX_REQUIRE_CUDA();
  // Two far-away initial centroids attract no point: both re-seeded at the farthest points.
  auto x = blobs(300, 4, 16, 3);
  KMeansOptions o;
  o.max_iters = 20;
  o.init = torch::cat({x.slice(0, 0, 4), torch::full({2, 16}, 1e4f)});
  expect_agrees(sgdx::ops::kmeans_cuda(x.cuda(), 6, o), sgdx::ops::kmeans(x, 6, o), x, 6, o.tol,
                "empty clusters");
  // The initial centroids already on the device.
  auto od = o;
  od.init = o.init.cuda();
  expect_agrees(sgdx::ops::kmeans_cuda(x.cuda(), 6, od), sgdx::ops::kmeans(x, 6, o), x, 6, o.tol,
                "init on device");
  // All rows equal: every draw after the first is uniform (total weight 0), every distance ties exactly.
  auto same = torch::ones({50, 3});
  KMeansOptions u;
  u.seed = 5;
  const auto g = sgdx::ops::kmeans_cuda(same.cuda(), 4, u);
  const auto c = sgdx::ops::kmeans(same, 4, u);
  EXPECT_TRUE(torch::equal(g.assignment.cpu(), c.assignment));
  EXPECT_TRUE(torch::equal(g.counts.cpu(), c.counts));
  EXPECT_TRUE(torch::equal(g.centroids.cpu(), c.centroids));
  EXPECT_EQ(g.iterations, c.iterations);
  // Backend selection through kmeans().
  u.backend = KMeansBackend::fused_cuda;
  const auto via = sgdx::ops::kmeans(x.cuda(), 4, u);
  EXPECT_EQ(via.backend, KMeansBackend::fused_cuda);
  KMeansOptions pp = u;
  pp.max_iters = 0;
  const auto init = sgdx::ops::kmeans_cuda(x.cuda(), 4, pp).centroids;
  expect_agrees(via, cpu_from(x, 4, u, init), x, 4, u.tol, "backend");
}

TEST(KMeansCuda, DeterministicAcrossRuns) {
  SGDX_REQUIRE_CUDA();
  auto x = blobs(4096, 32, 512, 9).cuda();
  KMeansOptions o;
  o.seed = 3;
  auto a = sgdx::ops::kmeans_cuda(x, 32, o);
  sgdx::testing::poison_cuda_cache();
  auto b = sgdx::ops::kmeans_cuda(x, 32, o);
  EXPECT_TRUE(torch::equal(a.centroids, b.centroids));
  EXPECT_TRUE(torch::equal(a.assignment, b.assignment));
  EXPECT_EQ(a.inertia, b.inertia);
}

// Features and initial centroids at an odd element offset (4- but not 8-byte
// aligned) give the same bits as aligned copies: the kernel loads scalars.
TEST(KMeansCuda, MisalignedInputs) {
  SGDX_REQUIRE_CUDA();
  for (int64_t d : {1, 7, 64, 129}) {
    auto x = blobs(777, 6, d, 21 + d).cuda();
    auto xm = sgdx::testing::at_odd_offset(x);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(xm.data_ptr()) % 8, 4u);
    ASSERT_TRUE(xm.is_contiguous());
    for (bool given : {false, true}) {
      KMeansOptions o;
      o.seed = 4;
      o.tol = 0;
      if (given) o.init = x.slice(0, 10, 16).clone();
      auto om = o;
      if (given) om.init = sgdx::testing::at_odd_offset(o.init);
      const auto a = sgdx::ops::kmeans_cuda(x, 6, o);
      const auto m = sgdx::ops::kmeans_cuda(xm, 6, om);
      const std::string what = "d=" + std::to_string(d) + (given ? " init" : " k-means++");
      EXPECT_TRUE(torch::equal(a.centroids, m.centroids)) << what;
      EXPECT_TRUE(torch::equal(a.assignment, m.assignment)) << what;
      EXPECT_EQ(a.inertia, m.inertia) << what;
      // And through a non-contiguous view (copied by the op).
      auto xt = x.t().contiguous().t();
      const auto t = sgdx::ops::kmeans_cuda(xt, 6, o);
      EXPECT_TRUE(torch::equal(a.assignment, t.assignment)) << what;
    }
  }
}

// n = 0 or d = 0: nothing runs, the outputs are on the device with the documented values.
TEST(KMeansCuda, EmptyInputsStayOnTheDevice) {
  SGDX_REQUIRE_CUDA();
  const auto dev = torch::TensorOptions().device(torch::kCUDA);
  for (auto shape : {std::vector<int64_t>{0, 5}, std::vector<int64_t>{9, 0}, std::vector<int64_t>{0, 0}}) {
    auto x = torch::empty(shape, dev);
    const int64_t n = shape[0], d = shape[1];
    const auto r = sgdx::ops::kmeans_cuda(x, 3);
    const std::string what = "n=" + std::to_string(n) + " d=" + std::to_string(d);
    ASSERT_TRUE(r.centroids.is_cuda() && r.assignment.is_cuda() && r.counts.is_cuda()) << what;
    EXPECT_EQ(r.centroids.sizes(), (std::vector<int64_t>{3, d})) << what;
    EXPECT_EQ(r.centroids.scalar_type(), torch::kFloat) << what;
    EXPECT_EQ(r.assignment.sizes(), (std::vector<int64_t>{n})) << what;
    EXPECT_EQ(r.assignment.scalar_type(), torch::kLong) << what;
    EXPECT_TRUE(torch::equal(r.assignment.cpu(), torch::zeros({n}, torch::kLong))) << what;
    EXPECT_TRUE(torch::equal(r.counts.cpu(), torch::tensor({n, int64_t{0}, int64_t{0}}))) << what;
    EXPECT_EQ(r.iterations, 0) << what;
    EXPECT_EQ(r.inertia, 0.0) << what;
    if (n == 0 && d > 0) EXPECT_TRUE(torch::isnan(r.centroids).all().item<bool>()) << what;
    // The launch-only entry point too, with the stats on the device.
    auto [c, a, counts, stats] = sgdx::ops::detail::kmeans_cuda_launch(x, 3, {});
    EXPECT_TRUE(c.is_cuda() && a.is_cuda() && counts.is_cuda() && stats.is_cuda()) << what;
    EXPECT_TRUE(torch::equal(stats.cpu(), torch::tensor({0.0, 0.0, -1.0, 0.0}, torch::kDouble))) << what;
  }
  // Given initial centroids are the result (uploaded from the host).
  KMeansOptions o;
  o.init = torch::randn({2, 4});
  const auto r = sgdx::ops::kmeans_cuda(torch::empty({0, 4}, dev), 2, o);
  EXPECT_TRUE(r.centroids.is_cuda());
  EXPECT_TRUE(torch::equal(r.centroids.cpu(), o.init));
}

// A grid larger than what is co-resident makes cudaLaunchCooperativeKernel fail
// with cudaErrorCooperativeLaunchTooLarge: the ATen path runs, no exception
// reaches the caller, and no CUDA error is left behind for the next launch check.
TEST(KMeansCuda, FallsBackToAtenWhenTheLaunchDoesNotFit) {
  SGDX_REQUIRE_CUDA();
#if SGDX_WITH_CUDA
  auto x = blobs(500, 5, 20, 13);
  KMeansOptions o;
  o.seed = 8;
  KMeansResult r;
  {
    const GridScope grid(1 << 20);
    ASSERT_NO_THROW(r = sgdx::ops::kmeans_cuda(x.cuda(), 5, o));
    EXPECT_EQ(r.backend, KMeansBackend::aten);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    // The launch-only entry point falls back the same way, its stats on the device.
    auto [c, a, counts, stats] = sgdx::ops::detail::kmeans_cuda_launch(x.cuda(), 5, o);
    EXPECT_TRUE(stats.is_cuda());
    auto s = stats.cpu();
    EXPECT_EQ(s[2].item<double>(), -1.0);
    EXPECT_GE(s[0].item<double>(), 1.0);
    EXPECT_TRUE(torch::equal(counts.cpu(), torch::bincount(a.cpu(), {}, 5)));
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // A later ordinary launch is not blamed for the failed one.
  EXPECT_NO_THROW(torch::ones({1000}, torch::kCUDA).cumsum(0).sum().item<float>());
  // The ATen path on the GPU from the same seed (its own k-means++ draws on the host).
  const auto cpu = sgdx::ops::kmeans(x, 5, o);
  expect_consistent(r, x, 5, "fallback");
  EXPECT_LE((r.assignment.cpu() != cpu.assignment).sum().item<int64_t>(), 2);
  // And the fused path is back once the grid fits.
  EXPECT_EQ(sgdx::ops::kmeans_cuda(x.cuda(), 5, o).backend, KMeansBackend::fused_cuda);
#endif
}

// One fused k-means has no host sync but the documented read of its result:
// the launch alone (with initial centroids uploaded from the host) runs under
// sync-debug L_ERROR, which throws on any synchronizing call, and the whole
// kmeans_cuda() makes exactly one synchronizing call.
TEST(KMeansCuda, NoHostSyncButTheOneRead) {
  SGDX_REQUIRE_CUDA();
#if SGDX_WITH_CUDA
  auto x = blobs(1000, 8, 32, 17).cuda();
  KMeansOptions drawn;
  drawn.seed = 2;
  KMeansOptions given;
  given.init = x.slice(0, 0, 8).cpu();
  sgdx::ops::kmeans_cuda(x, 8, drawn);  // warm-up: lazy initialisation outside the checked scopes
  torch::cuda::synchronize();
  for (const auto* o : {&drawn, &given}) {
    {
      const sgdx::testing::SyncDebugScope strict(c10::cuda::SyncDebugMode::L_ERROR);
      EXPECT_NO_THROW(sgdx::ops::detail::kmeans_cuda_launch(x, 8, *o));
      EXPECT_NO_THROW(sgdx::ops::detail::kmeans_cuda_launch(torch::empty({0, 32}, x.options()), 8, *o));
    }
    int syncs = -1;
    {
      sgdx::testing::SyncCounter count;
      sgdx::ops::kmeans_cuda(x, 8, *o);
      syncs = count.syncs;
    }
    EXPECT_EQ(syncs, 1) << (o == &drawn ? "k-means++" : "given init");
  }
#endif
}

TEST(KMeansCuda, LimitsOnTheDevice) {
  SGDX_REQUIRE_CUDA();
  const auto o = torch::TensorOptions().device(torch::kCUDA);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({4097, 2}, o), 2), "n = 4097 rows exceed");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({100, 2}, o), 65), "k = 65 clusters exceed");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({100, 1025}, o), 2), "d = 1025 features exceed");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({100, 2}, o.dtype(torch::kDouble)), 2),
                        "must be float32, got Double");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({3, 2}, o), 4),
                        "4 clusters exceed the number of samples 3");
  // Non-finite values are found by the kernel and reported after its one read.
  for (int64_t n : {10, 3000}) {
    auto bad = torch::randn({n, 5}, o);
    bad[n - 6][1] = NAN;
    bad[n - 2][4] = INFINITY;
    SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(bad, 2),
                          "non-finite feature in row " + std::to_string(n - 6));
  }
  KMeansOptions init;
  init.init = torch::zeros({2, 5});
  init.init[1][3] = -INFINITY;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({10, 5}, o), 2, init),
                        "initial centroids are not finite");
  // The device is fine afterwards.
  EXPECT_EQ(sgdx::ops::kmeans_cuda(torch::randn({10, 5}, o), 2).backend, KMeansBackend::fused_cuda);
}

// Argument checks come before any device work: no GPU needed.
TEST(KMeansCuda, ClearErrors) {
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({10, 2}), 2), "must be a CUDA tensor");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::empty({0, 2}), 2), "must be a CUDA tensor");
  KMeansOptions o;
  o.backend = KMeansBackend::fused_cuda;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(torch::randn({10, 2}), 2, o), "use KMeansBackend::aten");
  const auto meta = torch::TensorOptions().device(torch::kMeta);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::detail::check_kmeans_cuda(torch::empty({10, 2}, meta), 2, {}),
                        "must be a CUDA tensor, got meta");
}

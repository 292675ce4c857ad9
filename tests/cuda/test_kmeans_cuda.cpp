// The single-launch CUDA k-means against the ATen op on the CPU (itself tested
// against a float64 brute-force Lloyd in tests/ops/test_kmeans.cpp) on the same
// seed: well-separated blobs of many sizes (n, k, d not multiples of the tiles,
// one row, one feature, one cluster, the kernel's limits), given or drawn
// initial centroids, tol = 0 and tol > 0, empty clusters re-seeded, duplicate
// rows; determinism; the limits and errors. The argument checks run without a
// GPU; the rest skips.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "sgdx/config.h"
#include "sgdx/ops/kmeans.h"
#include "cuda/cuda_test_util.h"
#include "test_util.h"

using sgdx::ops::KMeansOptions;
using sgdx::ops::KMeansResult;

namespace {

// n points around k well-separated centres in d dims (float32, CPU).
at::Tensor blobs(int64_t n, int64_t k, int64_t d, uint64_t seed) {
  torch::manual_seed(seed);
  auto centres = torch::randn({k, d}) * 20.0;
  auto which = torch::randint(0, k, {n});
  return centres.index_select(0, which) + torch::randn({n, d});
}

void expect_same(const KMeansResult& gpu, const KMeansResult& cpu, const std::string& what) {
  ASSERT_TRUE(gpu.centroids.is_cuda()) << what;
  EXPECT_TRUE(torch::equal(gpu.assignment.cpu(), cpu.assignment)) << what;
  EXPECT_TRUE(torch::equal(gpu.counts.cpu(), cpu.counts)) << what;
  EXPECT_EQ(gpu.iterations, cpu.iterations) << what;
  EXPECT_TRUE(torch::allclose(gpu.centroids.cpu(), cpu.centroids, 1e-4, 1e-4)) << what;
  EXPECT_NEAR(gpu.inertia, cpu.inertia, 1e-4 * cpu.inertia + 1e-6) << what;
}

}  // namespace

TEST(KMeansCuda, MatchesAtenOnTheSameSeed) {
  SGDX_REQUIRE_CUDA();
  struct Case {
    int64_t n, k, d;
  };
  for (auto c : {Case{1, 1, 1}, Case{5, 2, 1}, Case{33, 3, 7}, Case{100, 8, 64}, Case{257, 5, 130},
                 Case{1000, 32, 33}, Case{4096, 32, 512}, Case{4096, 64, 1024}, Case{2049, 63, 129}}) {
    for (double tol : {0.0, 1e-4}) {
      for (int iters : {0, 1, 10, 100}) {
        auto x = blobs(c.n, c.k, c.d, 7 + c.n);
        KMeansOptions o;
        o.max_iters = iters;
        o.tol = tol;
        o.seed = 11;
        o.stream = static_cast<uint64_t>(c.k);
        const std::string what = "n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) + " d=" +
                                 std::to_string(c.d) + " tol=" + std::to_string(tol) + " iters=" + std::to_string(iters);
        auto cpu = sgdx::ops::kmeans(x, c.k, o);
        sgdx::testing::poison_cuda_cache();
        auto gpu = sgdx::ops::kmeans_cuda(x.cuda(), c.k, o);
        expect_same(gpu, cpu, what);
        // The k-means++ draws alone (max_iters = 0 returns them as centroids).
        if (iters == 0) {
          auto idx = sgdx::ops::kmeans_plusplus(x, c.k, o.seed, o.stream);
          EXPECT_TRUE(torch::equal(gpu.centroids.cpu(), x.index_select(0, idx))) << what;
        }
      }
    }
  }
}

TEST(KMeansCuda, GivenInitEmptyClustersAndDuplicates) {
  SGDX_REQUIRE_CUDA();
  // Two far-away initial centroids attract no point: both re-seeded at the farthest points.
  auto x = blobs(300, 4, 16, 3);
  KMeansOptions o;
  o.max_iters = 20;
  o.init = torch::cat({x.slice(0, 0, 4), torch::full({2, 16}, 1e4f)});
  auto cpu = sgdx::ops::kmeans(x, 6, o);
  auto gpu = sgdx::ops::kmeans_cuda(x.cuda(), 6, o);
  expect_same(gpu, cpu, "empty clusters");
  // All rows equal: every draw after the first is uniform (total weight 0).
  auto same = torch::ones({50, 3});
  KMeansOptions u;
  u.seed = 5;
  expect_same(sgdx::ops::kmeans_cuda(same.cuda(), 4, u), sgdx::ops::kmeans(same, 4, u), "duplicate rows");
  // Backend selection through kmeans().
  u.backend = sgdx::ops::KMeansBackend::fused_cuda;
  expect_same(sgdx::ops::kmeans(x.cuda(), 4, u), sgdx::ops::kmeans(x, 4, KMeansOptions{.seed = 5}), "backend");
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

TEST(KMeansCuda, LimitsOnTheDevice) {
  SGDX_REQUIRE_CUDA();
  const auto o = torch::TensorOptions().device(torch::kCUDA);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({4097, 2}, o), 2), "n = 4097 rows exceed");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({100, 2}, o), 65), "k = 65 clusters exceed");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({100, 1025}, o), 2), "d = 1025 features exceed");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({100, 2}, o.dtype(torch::kDouble)), 2),
                        "must be float32, got Double");
  auto nan = torch::randn({10, 2}, o);
  nan[4][1] = NAN;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(nan, 2), "non-finite feature in row 4");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({3, 2}, o), 4), "4 clusters exceed the number of samples 3");
}

// Argument checks come before any device work: no GPU needed.
TEST(KMeansCuda, ClearErrors) {
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans_cuda(torch::randn({10, 2}), 2), "must be a CUDA tensor");
  KMeansOptions o;
  o.backend = sgdx::ops::KMeansBackend::fused_cuda;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::kmeans(torch::randn({10, 2}), 2, o), "use KMeansBackend::aten");
}

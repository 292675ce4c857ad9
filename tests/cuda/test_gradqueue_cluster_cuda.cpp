// The clustered GradQueue statistics: the float64 ATen version against a
// brute-force loop (CPU, always), the CUDA kernel against the ATen version on
// fresh random operands (sizes around the 4096-element chunk, empty and
// one-element tensors, K from 1 to 64, with and without weight decay, every
// dtype, poisoned allocator cache), and the errors.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "cuda/cuda_test_util.h"
#include "sgdx/config.h"
#include "sgdx/ops/gradqueue_step.h"
#include "test_util.h"

using sgdx::ops::GradQueueClusterTensor;

namespace {

GradQueueClusterTensor make(int64_t n, int64_t K, double wd, torch::ScalarType dt, torch::Device dev) {
  const auto o = torch::TensorOptions().dtype(dt).device(dev);
  GradQueueClusterTensor t;
  t.sums = torch::randn({K, n}, o) * 3;
  t.param = torch::randn({n}, o);
  // The window statistics: mean (float64, as for exact storage) and M2 (the stats dtype;
  // a few negative values, which are clamped).
  t.s1 = torch::randn({n}, o.dtype(torch::kDouble)) * 4;
  t.s2 = (torch::rand({n}, o) * 8 - 0.5).to(sgdx::ops::gradqueue_stats_dtype(dt));
  t.inv_n = 0.25;
  t.weight_decay = wd;
  return t;
}

// Direct double loops.
std::vector<double> brute(const GradQueueClusterTensor& t, const std::vector<double>& inv) {
  const int64_t K = static_cast<int64_t>(inv.size()), n = t.s1.numel();
  auto g = t.sums.to(torch::kDouble).reshape({K, n}).contiguous();
  auto p = t.param.to(torch::kDouble).contiguous();
  auto s1 = t.s1.to(torch::kDouble).contiguous(), s2 = t.s2.to(torch::kDouble).contiguous();
  const double *G = g.data_ptr<double>(), *P = p.data_ptr<double>(), *S1 = s1.data_ptr<double>(),
               *S2 = s2.data_ptr<double>();
  std::vector<double> out(K + 1, 0.0);
  for (int64_t e = 0; e < n; ++e) {
    const double mu = S1[e];
    out[K] += std::max(S2[e] * t.inv_n, 0.0);
    for (int64_t k = 0; k < K; ++k) {
      const double v = G[k * n + e] * inv[k] + t.weight_decay * P[e] - mu;
      out[k] += v * v;
    }
  }
  return out;
}

at::Tensor inv_of(int64_t K) {
  auto inv = torch::rand({K}, torch::kDouble) + 0.01;
  if (K > 2) inv[1] = 0.0;  // an empty cluster
  return inv;
}

}  // namespace

TEST(GradQueueClusterStats, AtenMatchesBruteForce) {
  torch::manual_seed(0);
  for (int64_t K : {1, 3, 8}) {
    auto inv = inv_of(K);
    std::vector<double> iv(inv.data_ptr<double>(), inv.data_ptr<double>() + K);
    std::vector<GradQueueClusterTensor> ts;
    for (int64_t n : {0, 1, 5, 37, 1000})
      ts.push_back(make(n, K, n % 2 ? 0.01 : 0.0, torch::kFloat, torch::kCPU));
    auto got = sgdx::ops::gradqueue_cluster_stats_aten(ts, inv);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{5, K + 1}));
    for (size_t t = 0; t < ts.size(); ++t) {
      const auto want = brute(ts[t], iv);
      for (int64_t k = 0; k <= K; ++k) {
        EXPECT_NEAR(got[t][k].item<double>(), want[k], 1e-9 * (1 + std::abs(want[k])))
            << "tensor " << t << " k " << k;
      }
    }
  }
}

TEST(GradQueueClusterStats, CudaMatchesAten) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(1);
  const std::vector<int64_t> sizes = {0, 1, 3, 255, 4095, 4096, 4097, 100003, 1 << 20};
  for (auto dt : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    for (int64_t K : {1, 2, 7, 32, 64}) {
      for (double wd : {0.0, 1e-2}) {
        auto inv = inv_of(K);
        std::vector<GradQueueClusterTensor> cpu, gpu;
        for (auto n : sizes) {
          auto t = make(n, K, wd, dt, torch::kCPU);
          cpu.push_back(t);
          GradQueueClusterTensor g = t;
          g.sums = t.sums.cuda();
          g.param = t.param.cuda();
          g.s1 = t.s1.cuda();
          g.s2 = t.s2.cuda();
          gpu.push_back(g);
        }
        sgdx::testing::poison_cuda_cache();
        auto got = sgdx::ops::gradqueue_cluster_stats_cuda(gpu, inv.cuda()).cpu();
        auto want = sgdx::ops::gradqueue_cluster_stats_aten(cpu, inv);
        // Both in float64 from the same rounded operands: only the summation order differs.
        EXPECT_TRUE(torch::allclose(got, want, 1e-10, 1e-10)) << dt << " K=" << K << " wd=" << wd << "\n"
                                                              << (got - want).abs().max();
        auto again = sgdx::ops::gradqueue_cluster_stats_cuda(gpu, inv.cuda()).cpu();
        EXPECT_TRUE(torch::equal(got, again)) << "fixed-order reduction";
      }
    }
  }
}

// Both mean layouts (float64 for exact storage, the stats dtype for ema) and operands at
// an odd element offset (the kernel reads element by element: no alignment assumed).
TEST(GradQueueClusterStats, CudaMeanLayoutsAndMisalignedOperands) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(2);
  for (auto dt : {torch::kFloat, torch::kHalf}) {
    for (bool mean_double : {true, false}) {
      auto inv = inv_of(5);
      auto t = make(10007, 5, 1e-2, dt, torch::kCPU);
      if (!mean_double) t.s1 = t.s1.to(sgdx::ops::gradqueue_stats_dtype(dt));
      GradQueueClusterTensor g = t;
      g.sums = sgdx::testing::at_odd_offset(t.sums.cuda());
      g.param = sgdx::testing::at_odd_offset(t.param.cuda());
      g.s1 = sgdx::testing::at_odd_offset(t.s1.cuda());
      g.s2 = sgdx::testing::at_odd_offset(t.s2.cuda());
      auto got = sgdx::ops::gradqueue_cluster_stats_cuda({g}, inv.cuda()).cpu();
      auto want = sgdx::ops::gradqueue_cluster_stats_aten({t}, inv);
      EXPECT_TRUE(torch::allclose(got, want, 1e-10, 1e-10)) << dt << " mean_double " << mean_double;
    }
  }
}

TEST(GradQueueClusterStats, ClearErrors) {
  auto t = make(10, 3, 0.0, torch::kFloat, torch::kCPU);
  auto inv = torch::ones({3}, torch::kDouble);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_cuda({t}, inv), "must be on a CUDA device");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_aten({t}, torch::ones({3})), "float64 tensor [K]");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_aten({t}, torch::ones({4}, torch::kDouble)),
                        "expected [4, <10 elements>]");
  auto bad = t;
  bad.s2 = torch::ones({9});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_aten({bad}, inv), "s2 of 9");
  bad = t;
  bad.inv_n = 0.0;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_aten({bad}, inv), "inv_n 0");
  bad = t;
  bad.weight_decay = 0.1;
  bad.param = at::Tensor();
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_aten({bad}, inv), "no param");
  bad = t;
  bad.s2 = torch::ones({10}, torch::kDouble);  // float32 sums need float32 M2 (the mean may be float64)
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_cluster_stats_aten({bad}, inv), "with dtype Double");
}

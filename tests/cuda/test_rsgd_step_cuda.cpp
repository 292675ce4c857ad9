#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "sgdx/config.h"
#include "sgdx/ops/rsgd_step.h"
#include "cuda/cuda_test_util.h"
#include "test_util.h"

using sgdx::ops::RSGDStepConfig;

// The fused multi-tensor kernel against the CPU reference path on fresh random
// inputs: sizes around the vector width and chunk size, more tensors than one
// launch holds, every dtype, both granularities and memory modes.
TEST(RSGDStepCuda, MatchesCpuReference) {
  SGDX_REQUIRE_CUDA();
  const std::vector<int64_t> sizes = {0, 1, 3, 4, 5, 127, 1023, 32767, 32768, 32769, 100003, 1 << 20};
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    for (bool per_element : {true, false}) {
      for (bool previous : {false, true}) {
        std::vector<torch::Tensor> pc, gc, mc, pg, gg, mg;
        std::vector<int64_t> ids, steps;
        std::vector<double> probs;
        for (int k = 0; k < 90; ++k) {
          const int64_t n = sizes[k % sizes.size()] + (k / sizes.size());
          auto p = torch::randn({n}).to(dtype), g = torch::randn({n}).to(dtype), m = torch::randn({n}).to(dtype);
          pc.push_back(p.clone()); gc.push_back(g.clone()); mc.push_back(m.clone());
          pg.push_back(p.cuda()); gg.push_back(g.cuda()); mg.push_back(m.cuda());
          ids.push_back(k); steps.push_back(1 + k % 7);
          probs.push_back(k % 5 == 0 ? 1.0 : (k % 5 == 1 ? 0.0 : 0.1 * (k % 10)));
        }
        RSGDStepConfig c;
        c.lr = 0.05; c.weight_decay = 0.01; c.seed = 1234;
        c.per_element = per_element; c.memory_previous = previous;
        sgdx::ops::rsgd_step_cpu_(pc, gc, mc, ids, steps, probs, c);
        sgdx::ops::rsgd_step_(pg, gg, mg, ids, steps, probs, c);
        torch::cuda::synchronize();
        const double tol = (dtype == torch::kHalf || dtype == torch::kBFloat16) ? 1e-2 : 1e-6;
        for (size_t k = 0; k < pc.size(); ++k) {
          ASSERT_TRUE(torch::allclose(pg[k].cpu().to(torch::kDouble), pc[k].to(torch::kDouble), tol, tol))
              << dtype << " tensor " << k << " n=" << pc[k].numel();
          ASSERT_TRUE(torch::allclose(mg[k].cpu().to(torch::kDouble), mc[k].to(torch::kDouble), tol, tol))
              << dtype << " memory " << k;
        }
      }
    }
  }
}

TEST(RSGDStepCuda, RejectsMixedDevices) {
  SGDX_REQUIRE_CUDA();
  RSGDStepConfig c;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({torch::zeros({4}).cuda()}, {torch::zeros({4})},
                                              {torch::zeros({4}).cuda()}, {0}, {1}, {0.5}, c),
                        "is not on");
}

TEST(RSGDStepCuda, BuiltWithoutCudaThrowsClearly) {
  if (SGDX_WITH_CUDA) GTEST_SKIP() << "sgdx built with CUDA";
  RSGDStepConfig c;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_cuda_({}, {}, {}, {}, {}, {}, c), "built without CUDA");
}

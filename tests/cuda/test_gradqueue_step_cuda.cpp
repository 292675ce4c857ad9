// The fused multi-tensor GradQueue CUDA kernel against the ATen composition on
// the CPU (gradqueue_step_aten_, itself tested equal to the fused CPU kernel) on
// fresh random operands: sizes around the chunk size, empty and one-element
// tensors, more tensors than one launch holds, every dtype, both granularities
// and storages, every momentum mode; output rows poisoned before each run;
// grad_scale and found_inf. Skips without a CUDA device.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include "cuda/cuda_test_util.h"
#include "ops/gradqueue_step_util.h"
#include "sgdx/config.h"
#include "sgdx/ops/gradqueue_step.h"
#include "test_util.h"

using sgdx::ops::GradQueueStepConfig;
using sgdx::ops::GradQueueTensor;

namespace {
using Ops = sgdx::testing::GQOperands;
Ops make(int64_t n, torch::ScalarType dt, bool exact = true) {
  return sgdx::testing::make_gq_operands(n, dt, 3, exact);
}
using sgdx::testing::gq_view;
}  // namespace

TEST(GradQueueStepCuda, MatchesAtenReference) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(0);
  // 160 * 32768 + 5 spans two launches of the multi-tensor launcher (160 blocks each).
  const std::vector<int64_t> sizes = {0,     1,     3,     4,      5,       255,
                                      32767, 32768, 32769, 100003, 1 << 20, 160 * 32768 + 5};
  for (auto dt : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    const bool low = dt == torch::kHalf || dt == torch::kBFloat16;
    const double tol = low ? 2e-2 : (dt == torch::kFloat ? 1e-4 : 1e-12);
    for (bool elem : {true, false}) {
      for (bool exact : {true, false}) {
        for (int mom : {0, 1, 2, 3}) {
          // A live Delta-rho in [0.25, 4] (the config's default range is [1, 1]).
          const auto c = sgdx::testing::gq_config(mom, elem, mom == 2 ? 1.5 : 1.0, 0.25, 4.0);
          std::vector<Ops> cpu, gpu;
          std::vector<GradQueueTensor> tg;
          std::vector<int64_t> stats;
          for (int k = 0; k < 60; ++k) {  // > 24 tensors: several launches
            const int64_t n = sizes[k % sizes.size()] + k / static_cast<int>(sizes.size());
            auto o = make(n, dt, exact);
            cpu.push_back(o.clone());
            gpu.push_back(o.to(torch::kCUDA));
          }
          for (int k = 0; k < 60; ++k) {
            const int old_mode = exact ? k % 3 : 0;
            stats.push_back(k % 4 == 0 ? 0 : 3);
            if (exact && old_mode != 2)
              gpu[k].queue[0].fill_(NAN), cpu[k].queue[0].fill_(NAN);  // poison the output row
            tg.push_back(gq_view(gpu[k], exact, old_mode, stats[k], mom == 1));
          }
          auto rho = sgdx::ops::gradqueue_step_cuda_(tg, c).cpu();
          torch::cuda::synchronize();
          for (int k = 0; k < 60; ++k) {
            auto tc = gq_view(cpu[k], exact, exact ? k % 3 : 0, stats[k], mom == 1);
            const double r = sgdx::ops::gradqueue_step_aten_(tc, c).item<double>();
            const std::string where = std::string(c10::toString(dt)) + " elem " + std::to_string(elem) +
                                      " exact " + std::to_string(exact) + " mom " + std::to_string(mom) +
                                      " tensor " + std::to_string(k) + " n " +
                                      std::to_string(cpu[k].p.numel());
            for (auto [a, b, what] : {std::tuple{gpu[k].p, cpu[k].p, "param"},
                                      {gpu[k].v, cpu[k].v, "momentum"},
                                      {gpu[k].s1, cpu[k].s1, "s1"},
                                      {gpu[k].s2, cpu[k].s2, "s2"},
                                      {gpu[k].queue, cpu[k].queue, "queue"}}) {
              ASSERT_TRUE(torch::allclose(a.cpu().to(torch::kDouble), b.to(torch::kDouble), tol, tol))
                  << what << " " << where;
            }
            EXPECT_NEAR(rho[k].item<double>(), r,
                        (low ? 1e-2 : 1e-4) * std::max<double>(1.0, cpu[k].p.numel()))
                << where;
          }
        }
      }
    }
  }
}

TEST(GradQueueStepCuda, GradScaleDividesAndFoundInfSkipsEverything) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(1);
  GradQueueStepConfig c;
  c.lr = 0.1;
  c.momentum = 0.9;
  c.rho_min = 0.25;
  c.rho_max = 4.0;
  for (bool elem : {true, false}) {
    c.per_element = elem;
    auto base = make(70001, torch::kFloat).to(torch::kCUDA);
    auto scaled = base.clone();
    scaled.g.mul_(1024);
    auto plain = base.clone();
    std::vector<GradQueueTensor> a = {gq_view(scaled, true, 1, 3, false)},
                                 b = {gq_view(plain, true, 1, 3, false)};
    auto scale = torch::full({1}, 1024.f, torch::TensorOptions().device(torch::kCUDA));
    sgdx::ops::gradqueue_step_cuda_(a, c, scale);
    sgdx::ops::gradqueue_step_cuda_(b, c);
    EXPECT_TRUE(torch::allclose(scaled.p, plain.p, 1e-6, 1e-6));
    EXPECT_TRUE(torch::allclose(scaled.v, plain.v, 1e-6, 1e-6));
    // found_inf: nothing may change, momentum and queue included.
    auto skip = base.clone();
    const auto before = skip.clone();
    std::vector<GradQueueTensor> s = {gq_view(skip, true, 1, 3, false)};
    auto inf = torch::ones({1}, torch::TensorOptions().device(torch::kCUDA));
    auto sums = sgdx::ops::gradqueue_step_cuda_(s, c, scale, inf);
    torch::cuda::synchronize();
    EXPECT_TRUE(torch::equal(sums.cpu(), torch::zeros({1}, torch::kDouble)));
    for (auto [x, y] : {std::pair{skip.p, before.p},
                        {skip.v, before.v},
                        {skip.s1, before.s1},
                        {skip.s2, before.s2},
                        {skip.queue, before.queue}})
      EXPECT_TRUE(torch::equal(x, y));
  }
}

TEST(GradQueueStepCuda, RejectsBadListsClearly) {
  SGDX_REQUIRE_CUDA();
  auto g = make(10, torch::kFloat).to(torch::kCUDA);
  auto h = make(10, torch::kFloat);
  std::vector<GradQueueTensor> mixed = {gq_view(g, true, 1, 0, false), gq_view(h, true, 1, 0, false)};
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_cuda_(mixed, GradQueueStepConfig{}), "tensor 1 is on cpu");
  std::vector<GradQueueTensor> one = {gq_view(g, true, 1, 0, false)};
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_cuda_(one, GradQueueStepConfig{},
                                                        torch::ones({1}, torch::kCUDA).to(torch::kDouble)),
                        "grad_scale must be one float32 value");
}

TEST(GradQueueStepCuda, BuiltWithoutCudaThrowsClearly) {
  if (SGDX_WITH_CUDA) GTEST_SKIP() << "sgdx built with CUDA";
  auto o = make(4, torch::kFloat);
  std::vector<GradQueueTensor> t = {gq_view(o, true, 1, 0, false)};
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_cuda_(t, GradQueueStepConfig{}), "built without CUDA");
}

TEST(GradQueueStepCuda, CpuListsAreRejectedByTheCudaEntry) {
  if (!SGDX_WITH_CUDA) GTEST_SKIP() << "sgdx built without CUDA";
  auto o = make(4, torch::kFloat);
  std::vector<GradQueueTensor> t = {gq_view(o, true, 1, 0, false)};
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_cuda_(t, GradQueueStepConfig{}),
                        "must be on a CUDA device, got cpu");
}

// Operands at an odd element offset (the kernel has only a scalar path; nothing may
// assume alignment), against the ATen composition on the CPU.
TEST(GradQueueStepCuda, MisalignedOperandsMatchAten) {
  SGDX_REQUIRE_CUDA();
  torch::manual_seed(6);
  const int64_t n = 40001;
  auto shifted = [&](const torch::Tensor& x) {
    auto base = torch::empty({x.numel() + 1}, x.options());
    auto view = base.narrow(0, 1, x.numel()).view(x.sizes());
    view.copy_(x);
    return view;
  };
  auto o = make(n, torch::kFloat);
  auto cpu = o.clone();
  Ops gpu{shifted(o.p.cuda()),  shifted(o.g.cuda()),  shifted(o.v.cuda()),
          shifted(o.s1.cuda()), shifted(o.s2.cuda()), shifted(o.queue.cuda())};
  ASSERT_NE(reinterpret_cast<uintptr_t>(gpu.p.data_ptr()) % 16, 0u);
  const auto c = sgdx::testing::gq_config(2, true, 1.0, 0.25, 4.0);
  std::vector<GradQueueTensor> tg{gq_view(gpu, true, 1, 3, false)};
  sgdx::ops::gradqueue_step_cuda_(tg, c);
  auto tc = gq_view(cpu, true, 1, 3, false);
  sgdx::ops::gradqueue_step_aten_(tc, c);
  for (auto [a, b, what] : {std::tuple{gpu.p, cpu.p, "param"},
                            {gpu.v, cpu.v, "momentum"},
                            {gpu.s1, cpu.s1, "s1"},
                            {gpu.s2, cpu.s2, "s2"},
                            {gpu.queue, cpu.queue, "queue"}}) {
    EXPECT_TRUE(torch::allclose(a.cpu().to(torch::kDouble), b.to(torch::kDouble), 1e-4, 1e-4)) << what;
  }
}

// The fused CPU GradQueue step against its ATen composition (the path CUDA,
// half and bfloat16 tensors take) on fresh random operands of many sizes,
// including sizes that are not multiples of the tile or vector width, one
// element and empty tensors.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "gradqueue_step_util.h"
#include "sgdx/ops/gradqueue_step.h"
#include "test_util.h"

namespace {

using sgdx::ops::GradQueueStepConfig;
using sgdx::ops::GradQueueTensor;

using Operands = sgdx::testing::GQOperands;
using sgdx::testing::gq_view;

TEST(GradQueueStep, FusedCpuEqualsAtenComposition) {
  at::manual_seed(0);
  int cases = 0;
  for (auto dt : {at::kFloat, at::kDouble}) {
    const double tol = dt == at::kFloat ? 2e-6 : 1e-13;
    for (int64_t n : {0, 1, 7, 16, 255, 256, 257, 1000, 32768 + 13, 100003}) {
      for (bool elem : {true, false}) {
        for (bool exact : {true, false}) {
          for (int old_mode : {0, 1, 2}) {
            if (!exact && old_mode != 0) continue;
            for (int mom : {0, 1, 2, 3}) {  // none, heavy ball first/later, nesterov later
              const auto c = sgdx::testing::gq_config(mom, elem, (n % 2 == 0) ? 1.0 : 1.5, 0.5, 2.0);
              const int64_t stats = (n % 3 == 0) ? 0 : 5;
              auto base = sgdx::testing::make_gq_operands(n, dt, 4, exact);
              auto a = base.clone(), b = base.clone();
              // Poison nothing but outputs: slot rows of both copies start as NaN when no row leaves through
              // them.
              if (exact && old_mode != 2) a.queue[0].fill_(NAN), b.queue[0].fill_(NAN);
              auto ta = gq_view(a, exact, old_mode, stats, mom == 1);
              auto tb = gq_view(b, exact, old_mode, stats, mom == 1);
              const double ra = sgdx::ops::gradqueue_step_(ta, c).item<double>();
              const double rb = sgdx::ops::gradqueue_step_aten_(tb, c).item<double>();
              const std::string where = "dtype " + std::string(c10::toString(dt)) + " n " +
                                        std::to_string(n) + " elem " + std::to_string(elem) + " exact " +
                                        std::to_string(exact) + " old " + std::to_string(old_mode) + " mom " +
                                        std::to_string(mom);
              for (auto [x, y, what] : {std::tuple{a.p, b.p, "param"},
                                        {a.v, b.v, "momentum"},
                                        {a.s1, b.s1, "s1"},
                                        {a.s2, b.s2, "s2"},
                                        {a.queue, b.queue, "queue"}}) {
                ASSERT_TRUE(at::allclose(x, y, tol, tol, /*equal_nan=*/false)) << what << " " << where;
              }
              EXPECT_NEAR(ra, rb, 1e-5 * std::max<double>(1.0, n)) << where;
              if (stats > 0) {
                EXPECT_GE(ra, c.rho_min * n - 1e-6) << where;
                EXPECT_LE(ra, c.rho_max * n + 1e-6) << where;
              }
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 500);
}

TEST(GradQueueStep, HalfPrecisionTakesTheAtenPath) {
  auto base = sgdx::testing::make_gq_operands(1001, at::kHalf, 3);
  EXPECT_EQ(base.s2.scalar_type(), at::kFloat);  // window statistics of half parameters are float32
  EXPECT_EQ(base.queue.scalar_type(), at::kFloat);
  GradQueueStepConfig c;
  c.lr = 0.1;
  c.momentum = 0.9;
  auto t = gq_view(base, true, 1, 3, true);
  const auto before = base.p.clone();
  const double r = sgdx::ops::gradqueue_step_(t, c).item<double>();
  EXPECT_TRUE(at::isfinite(base.p).all().item<bool>());
  EXPECT_FALSE(at::equal(before, base.p));
  EXPECT_GT(r, 0);
}

TEST(GradQueueStep, ClearErrors) {
  auto o = sgdx::testing::make_gq_operands(10, at::kFloat, 2);
  GradQueueStepConfig c;
  auto t = gq_view(o, true, 1, 0, false);
  t.grad = at::randn({11});
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_(t, c), "operand of 11 elements");
  t = gq_view(o, true, 1, 0, false);
  t.grad = at::randn({10}, at::kDouble);
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_(t, c), "does not match the parameter");
  t = gq_view(o, true, 1, 0, false);
  t.slot = at::Tensor();
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_(t, c), "exact storage needs the queue slot");
  t = gq_view(o, true, 1, 0, false);
  t.momentum = at::Tensor();
  c.momentum = 0.9;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::gradqueue_step_(t, c), "momentum buffer is undefined");
}

}  // namespace

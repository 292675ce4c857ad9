// CosineLR against the closed form of PyTorch's CosineAnnealingLR and its landmarks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "sgdx/optim/cosine_lr.h"
#include "test_util.h"

namespace {

// Two groups with their own rates, so that each group's lr_0 is used.
struct TwoGroups {
  torch::Tensor a = torch::zeros({2}, torch::requires_grad()), b = torch::zeros({3}, torch::requires_grad());
  torch::optim::SGD opt{
      std::vector<torch::optim::OptimizerParamGroup>{
          torch::optim::OptimizerParamGroup({a}, std::make_unique<torch::optim::SGDOptions>(0.1)),
          torch::optim::OptimizerParamGroup({b}, std::make_unique<torch::optim::SGDOptions>(0.4))},
      torch::optim::SGDOptions(1.0)};
  double lr(size_t g) { return opt.param_groups()[g].options().get_lr(); }
};

}  // namespace

TEST(CosineLR, FollowsTheClosedFormPerGroup) {
  TwoGroups t;
  const int64_t total = 10;
  const double eta_min = 0.01;
  sgdx::optim::CosineLR sched(t.opt, total, eta_min);
  for (int64_t step = 0; step <= 2 * total; ++step) {
    for (size_t g = 0; g < 2; ++g) {
      const long double lr0 = g == 0 ? 0.1L : 0.4L;
      const long double want =
          eta_min +
          (lr0 - eta_min) * (1 + std::cos(3.14159265358979323846264338327950288L * step / total)) / 2;
      EXPECT_NEAR(t.lr(g), static_cast<double>(want), 1e-15) << "step " << step << " group " << g;
    }
    EXPECT_EQ(sched.steps(), step);
    sched.step();
  }
}

TEST(CosineLR, Landmarks) {
  TwoGroups t;
  sgdx::optim::CosineLR sched(t.opt, 4);
  EXPECT_EQ(t.lr(0), 0.1);  // step 0: lr_0 exactly
  sched.step();
  sched.step();
  EXPECT_NEAR(t.lr(1), 0.2, 1e-16);  // half way: the mean of lr_0 and eta_min
  sched.step();
  sched.step();
  EXPECT_NEAR(t.lr(0), 0.0, 1e-17);  // the end: eta_min
}

TEST(CosineLR, SetStepsContinuesAResumedRun) {
  TwoGroups straight, resumed;
  sgdx::optim::CosineLR a(straight.opt, 7), b(resumed.opt, 7);
  for (int i = 0; i < 5; ++i) a.step();
  b.set_steps(5);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(straight.lr(0), resumed.lr(0));
    EXPECT_EQ(straight.lr(1), resumed.lr(1));
    a.step();
    b.step();
  }
}

TEST(CosineLR, ClearErrors) {
  TwoGroups t;
  SGDX_EXPECT_THROW_MSG(sgdx::optim::CosineLR(t.opt, 0), "total_steps must be > 0, got 0");
  SGDX_EXPECT_THROW_MSG(sgdx::optim::CosineLR(t.opt, 3, std::nan("")), "eta_min must be finite and >= 0");
  sgdx::optim::CosineLR s(t.opt, 3);
  SGDX_EXPECT_THROW_MSG(s.set_steps(-1), "step -1 is out of range");
}

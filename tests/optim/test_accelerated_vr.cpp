#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>
#include <sstream>

#include "logistic_problem.h"
#include "sgdx/optim/accelerated_vr.h"
#include "test_util.h"

using sgdx::optim::DASVRDA;
using sgdx::optim::DASVRDAOptions;
using sgdx::optim::Katyusha;
using sgdx::optim::KatyushaOptions;
using sgdx::optim::Restart;
using sgdx::testing::Logistic;
using sgdx::testing::run_vr;

namespace {
// Steps until `passes` component-gradient passes are spent; returns the relative gap.
template <typename Opt>
double gap_after(Opt& opt, const Logistic& prob, at::Tensor& w, double passes, int64_t b, double p_star) {
  std::mt19937_64 rng(11);
  const int64_t n = prob.a.size(0);
  while (double(opt.gradient_evaluations()) < passes * double(n)) run_vr(opt, prob, w, 1, rng, b);
  return (prob.objective(w.detach()) - p_star) / std::abs(p_star);
}
}  // namespace

// Each method reaches the optimum of an independent FISTA run on strongly convex
// problems (l1 = 0 and l1 > 0) to 1e-10 relative gap.
TEST(AcceleratedVR, KatyushaAndDasvrdaReachTheFistaOptimum) {
  for (auto [l1, l2] : {std::pair{0.0, 1e-2}, std::pair{3e-2, 1e-2}}) {
    Logistic prob(200, 8, l1, l2, 2);
    const auto x_star = prob.fista(20000);
    const double p_star = prob.objective(x_star);
    {
      auto w = torch::zeros({8}, torch::kDouble).requires_grad_();
      Katyusha opt({w}, KatyushaOptions(0.25).n(200).b(1).l1(l1).l2(l2));
      const double gap = gap_after(opt, prob, w, 150, 1, p_star);
      EXPECT_LT(gap, 1e-10) << "Katyusha l1 " << l1;
      EXPECT_GT(gap, -1e-12);
    }
    for (auto restart : {Restart::none, Restart::periodic, Restart::adaptive}) {
      auto w = torch::zeros({8}, torch::kDouble).requires_grad_();
      DASVRDA opt({w}, DASVRDAOptions(0.25).n(200).l1(l1).l2(l2).restart(restart).lr(4 * DASVRDAOptions(0.25).n(200).eta()));
      const double gap = gap_after(opt, prob, w, 150, DASVRDAOptions(0.25).n(200).batch(), p_star);
      EXPECT_LT(gap, 1e-10) << "DASVRDA l1 " << l1 << " restart " << int(restart);
      EXPECT_GT(gap, -1e-12);
      if (l1 > 0) EXPECT_TRUE(torch::equal(w.detach() == 0, x_star == 0)) << w << x_star;
    }
  }
}

TEST(AcceleratedVR, TheoryDefaults) {
  DASVRDAOptions o(0.25);
  o.n(200);
  EXPECT_EQ(o.batch(), 15);                  // ceil(sqrt(200))
  EXPECT_EQ(o.inner_steps(), 14);            // ceil(200 / 15)
  const double gamma = (3 + std::sqrt(9 + 8.0 * 15 / 15)) / 2;
  EXPECT_DOUBLE_EQ(o.gamma(), gamma);
  EXPECT_DOUBLE_EQ(o.eta(), 1 / ((1 + gamma * 15 / 15) * 0.25));
  o.l2(1e-2);
  EXPECT_EQ(o.period(), 1 + static_cast<int64_t>(std::ceil(std::sqrt(25.0) * (15.0 / 200 + 1 / std::sqrt(200.0)))));
  EXPECT_EQ(KatyushaOptions(0.25).n(200).b(4).inner_steps(), 50);
}

TEST(AcceleratedVR, SaveLoadMidStageResumesBitIdentically) {
  Logistic prob(60, 4, 1e-3, 1e-3, 3);
  auto resume = [&](auto make) {
    auto w = torch::zeros({4}, torch::kDouble).requires_grad_();
    auto a = make(w);
    std::mt19937_64 rng(1);
    run_vr(*a, prob, w, 23, rng, 3);
    std::ostringstream buf;
    {
      torch::serialize::OutputArchive ar;
      a->save(ar);
      ar.save_to(buf);
    }
    auto w2 = w.detach().clone().requires_grad_();
    auto b = make(w2);
    {
      std::istringstream in(buf.str());
      torch::serialize::InputArchive ar;
      ar.load_from(in);
      b->load(ar);
    }
    auto rng2 = rng;
    run_vr(*a, prob, w, 60, rng, 3);
    run_vr(*b, prob, w2, 60, rng2, 3);
    EXPECT_TRUE(torch::equal(w, w2)) << w << w2;
    EXPECT_EQ(a->gradient_evaluations(), b->gradient_evaluations());
  };
  resume([](at::Tensor& w) { return std::make_unique<Katyusha>(std::vector<at::Tensor>{w}, KatyushaOptions(0.25).n(60).b(3).l1(1e-3).l2(1e-3)); });
  resume([](at::Tensor& w) {
    return std::make_unique<DASVRDA>(std::vector<at::Tensor>{w}, DASVRDAOptions(0.25).n(60).b(3).l1(1e-3).l2(1e-3).restart(Restart::adaptive));
  });
}

TEST(AcceleratedVR, ClearErrors) {
  auto w = torch::zeros({3}, torch::requires_grad());
  SGDX_EXPECT_THROW_MSG(Katyusha({w}, KatyushaOptions(0.0).n(10)), "smoothness L must be > 0, got 0");
  SGDX_EXPECT_THROW_MSG(Katyusha({w}, KatyushaOptions(1.0).n(10).b(20)), "minibatch size b must be in [1, n = 10], got 20");
  SGDX_EXPECT_THROW_MSG(DASVRDA({w}, DASVRDAOptions(1.0).n(10).l1(-1)), "l1 must be >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(DASVRDA({w}, DASVRDAOptions(1.0)), "n (the number of components) must be > 0, got 0");
  SGDX_EXPECT_THROW_MSG(DASVRDA({w}, DASVRDAOptions(1.0).n(10).restart(Restart::periodic)), "periodic restart needs l2 > 0");
  Katyusha k({w}, KatyushaOptions(1.0).n(10));
  SGDX_EXPECT_THROW_MSG(k.step([] { return torch::zeros({}); }), "call set_full_gradient_closure() before step()");
}

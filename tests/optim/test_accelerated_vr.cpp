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
      DASVRDA opt({w}, DASVRDAOptions(0.25).n(200).l1(l1).l2(l2).restart(restart).lr(
                           4 * DASVRDAOptions(0.25).n(200).eta()));
      const double gap = gap_after(opt, prob, w, 150, DASVRDAOptions(0.25).n(200).batch(), p_star);
      EXPECT_LT(gap, 1e-10) << "DASVRDA l1 " << l1 << " restart " << int(restart);
      EXPECT_GT(gap, -1e-12);
      if (l1 > 0) EXPECT_TRUE(torch::equal(w.detach() == 0, x_star == 0)) << w << x_star;
    }
  }
}

// Weights regularised, bias not: each method reaches the optimum of FISTA with the
// same per-coordinate prox (a bias column of ones; its coordinate unregularised).
TEST(AcceleratedVR, RegulariseChosenParametersOnly) {
  Logistic prob(200, 6, 3e-2, 1e-2, 4);
  const int64_t n = 200;
  auto a = prob.a;
  auto full_x = torch::cat({a, torch::ones({n, 1}, torch::kDouble)}, 1);
  auto mask = torch::cat({torch::ones({6}, torch::kDouble), torch::zeros({1}, torch::kDouble)});
  auto obj = [&](const at::Tensor& w, const at::Tensor& b) {
    torch::NoGradGuard g;
    return torch::nn::functional::softplus(-prob.y * (a.mv(w) + b)).mean().item<double>() +
           prob.l1 * w.abs().sum().item<double>() + 0.5 * prob.l2 * w.pow(2).sum().item<double>();
  };
  // FISTA on (w, b) with the prox on w only; L <= (1 + 1) / 4 for unit rows plus the bias column.
  auto x = torch::zeros({7}, torch::kDouble), z = x.clone();
  double t = 1;
  const double step = 2.0;
  for (int k = 0; k < 40000; ++k) {
    auto g = -(full_x * (prob.y * torch::sigmoid(-prob.y * full_x.mv(z))).unsqueeze(1)).sum(0) / double(n);
    auto v = z - step * g;
    auto shrunk = torch::sign(v) * torch::clamp_min(v.abs() - step * prob.l1, 0.0) / (1 + step * prob.l2);
    auto xn = mask * shrunk + (1 - mask) * v;
    const double tn = (1 + std::sqrt(1 + 4 * t * t)) / 2;
    z = xn + ((t - 1) / tn) * (xn - x);
    x = xn;
    t = tn;
  }
  const double p_star = obj(x.narrow(0, 0, 6), x[6]);
  auto run = [&](auto& opt, at::Tensor& w, at::Tensor& b, int64_t batch) {
    opt.set_full_gradient_closure([&] {
      auto l = torch::nn::functional::softplus(-prob.y * (a.mv(w) + b)).mean();
      l.backward();
      return l;
    });
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    while (opt.gradient_evaluations() < 200 * n) {
      std::vector<int64_t> idx(batch);
      for (auto& i : idx) i = pick(rng);
      auto ib = torch::tensor(idx, torch::kLong);
      opt.step([&] {
        auto l =
            torch::nn::functional::softplus(-prob.y.index_select(0, ib) * (a.index_select(0, ib).mv(w) + b))
                .mean();
        l.backward();
        return l;
      });
    }
    return (obj(w.detach(), b.detach()) - p_star) / std::abs(p_star);
  };
  {
    auto w = torch::zeros({6}, torch::kDouble).requires_grad_();
    auto b = torch::zeros({}, torch::kDouble).requires_grad_();
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<at::Tensor>{w});
    groups.emplace_back(std::vector<at::Tensor>{b},
                        std::make_unique<KatyushaOptions>(KatyushaOptions(0.5).n(n).b(1)));
    Katyusha opt(groups, KatyushaOptions(0.5).n(n).b(1).l1(prob.l1).l2(prob.l2));
    EXPECT_EQ(static_cast<KatyushaOptions&>(opt.param_groups()[1].options()).l1(),
              0.0);  // kept, not the defaults
    EXPECT_LT(run(opt, w, b, 1), 1e-9);
  }
  {
    auto w = torch::zeros({6}, torch::kDouble).requires_grad_();
    auto b = torch::zeros({}, torch::kDouble).requires_grad_();
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<at::Tensor>{w});
    groups.emplace_back(std::vector<at::Tensor>{b},
                        std::make_unique<DASVRDAOptions>(DASVRDAOptions(0.5).n(n)));
    const double eta = 4 * DASVRDAOptions(0.5).n(n).eta();
    DASVRDA opt(groups, DASVRDAOptions(0.5).n(n).l1(prob.l1).l2(prob.l2).lr(eta));
    EXPECT_LT(run(opt, w, b, DASVRDAOptions(0.5).n(n).batch()), 1e-9);
  }
}

TEST(AcceleratedVR, TheoryDefaults) {
  DASVRDAOptions o(0.25);
  o.n(200);
  EXPECT_EQ(o.batch(), 15);        // ceil(sqrt(200))
  EXPECT_EQ(o.inner_steps(), 14);  // ceil(200 / 15)
  const double gamma = (3 + std::sqrt(9 + 8.0 * 15 / 15)) / 2;
  EXPECT_DOUBLE_EQ(o.gamma(), gamma);
  EXPECT_DOUBLE_EQ(o.eta(), 1 / ((1 + gamma * 15 / 15) * 0.25));
  o.l2(1e-2);
  EXPECT_EQ(o.period(),
            1 + static_cast<int64_t>(std::ceil(std::sqrt(25.0) * (15.0 / 200 + 1 / std::sqrt(200.0)))));
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
  resume([](at::Tensor& w) {
    return std::make_unique<Katyusha>(std::vector<at::Tensor>{w},
                                      KatyushaOptions(0.25).n(60).b(3).l1(1e-3).l2(1e-3));
  });
  resume([](at::Tensor& w) {
    return std::make_unique<DASVRDA>(
        std::vector<at::Tensor>{w},
        DASVRDAOptions(0.25).n(60).b(3).l1(1e-3).l2(1e-3).restart(Restart::adaptive));
  });
}

TEST(AcceleratedVR, ClearErrors) {
  auto w = torch::zeros({3}, torch::requires_grad());
  SGDX_EXPECT_THROW_MSG(Katyusha({w}, KatyushaOptions(0.0).n(10)), "smoothness L must be > 0, got 0");
  SGDX_EXPECT_THROW_MSG(Katyusha({w}, KatyushaOptions(1.0).n(10).b(20)),
                        "minibatch size b must be in [1, n = 10], got 20");
  SGDX_EXPECT_THROW_MSG(DASVRDA({w}, DASVRDAOptions(1.0).n(10).l1(-1)), "l1 must be >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(DASVRDA({w}, DASVRDAOptions(1.0)), "n (the number of components) must be > 0, got 0");
  SGDX_EXPECT_THROW_MSG(DASVRDA({w}, DASVRDAOptions(1.0).n(10).restart(Restart::periodic)),
                        "periodic restart needs l2 > 0");
  Katyusha k({w}, KatyushaOptions(1.0).n(10));
  SGDX_EXPECT_THROW_MSG(k.step([] { return torch::zeros({}); }),
                        "call set_full_gradient_closure() before step()");
}

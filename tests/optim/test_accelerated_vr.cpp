#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>
#include <sstream>

#include "logistic_problem.h"
#include "option_fields.h"
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

// Every option reaches the checkpoint, under its name.
TEST(AcceleratedVR, EveryOptionFieldIsSaved) {
  auto w = torch::zeros({3}, torch::requires_grad());
  sgdx::testing::expect_every_field_round_trips(
      KatyushaOptions(0.5).n(50).b(5).m(7).l1(1e-3).l2(2e-3).lr(0.1), KatyushaOptions(1.0).n(60),
      {"L", "n", "b", "m", "l1", "l2", "lr"},
      [&](const KatyushaOptions& o) { return std::make_unique<Katyusha>(std::vector<at::Tensor>{w}, o); });
  sgdx::testing::expect_every_field_round_trips(
      DASVRDAOptions(0.5)
          .n(50)
          .b(5)
          .m(7)
          .lr(0.1)
          .l1(1e-3)
          .l2(2e-3)
          .restart(Restart::periodic)
          .restart_period(4),
      DASVRDAOptions(1.0).n(60), {"L", "n", "b", "m", "lr", "l1", "l2", "restart", "restart_period"},
      [&](const DASVRDAOptions& o) { return std::make_unique<DASVRDA>(std::vector<at::Tensor>{w}, o); });
}

// A checkpoint of an sgdx before Katyusha's lr option (no "lr" key) loads with lr 0 (1/(3L)).
TEST(AcceleratedVR, KatyushaOptionsWithoutLrLoad) {
  torch::serialize::OutputArchive out;
  for (const char* k : {"L", "l1", "l2"}) out.write(k, c10::IValue(0.5));
  for (const char* k : {"n", "b", "m"}) out.write(k, c10::IValue(int64_t{4}));
  std::stringstream buf;
  out.save_to(buf);
  torch::serialize::InputArchive in;
  in.load_from(buf);
  KatyushaOptions o(1.0);
  o.lr(0.25);
  o.serialize(in);
  EXPECT_EQ(o.lr(), 0.25);  // kept: the key is absent
  EXPECT_EQ(o.L(), 0.5);
  EXPECT_DOUBLE_EQ(KatyushaOptions(0.5).n(4).get_lr(), 1.0 / 1.5);
}

// Per-parameter state as the string-keyed VRParamState of earlier versions wrote it
// (a "keys" list, the tensors under their names, the scratch point "x") loads.
TEST(AcceleratedVR, EarlierStateLayoutLoads) {
  torch::serialize::OutputArchive out;
  const std::vector<std::string> names = {"mu", "x", "xt", "y", "ysum", "z"};
  for (size_t k = 0; k < names.size(); ++k)
    out.write(names[k], torch::full({2}, double(k)), /*is_buffer=*/true);
  out.write("keys", c10::IValue(std::string("mu,x,xt,y,ysum,z")));
  std::stringstream buf;
  out.save_to(buf);
  torch::serialize::InputArchive in;
  in.load_from(buf);
  sgdx::optim::KatyushaParamState st;
  st.serialize(in);
  EXPECT_TRUE(torch::equal(st.mu(), torch::full({2}, 0.0)));
  EXPECT_TRUE(torch::equal(st.xt(), torch::full({2}, 2.0)));
  EXPECT_TRUE(torch::equal(st.y(), torch::full({2}, 3.0)));
  EXPECT_TRUE(torch::equal(st.ysum(), torch::full({2}, 4.0)));
  EXPECT_TRUE(torch::equal(st.z(), torch::full({2}, 5.0)));
}

// What an LR scheduler does (param_groups()[i].options().set_lr) sets Katyusha's step
// eta: y_{k+1} = prox_{eta R}(x_{k+1} - eta v), z_{k+1} = prox_{(eta/tau1) R}(z_k - (eta/tau1) v)
// with tau1 from L and sigma, checked against a float64 reference of the rule; with
// R = 0 halving lr halves the move y_{k+1} - x_{k+1} (up to the rounding of x - eta v).
TEST(AcceleratedVR, KatyushaSetLrScalesTheStep) {
  using sgdx::optim::KatyushaParamState;
  Logistic prob(40, 5, 0, 0, 7);
  const double L = 0.25;
  for (double l2 : {0.0, 1e-2}) {
    std::vector<at::Tensor> moves;
    for (double scale : {1.0, 0.5}) {
      auto w = torch::zeros({5}, torch::kDouble).requires_grad_();
      Katyusha opt({w}, KatyushaOptions(L).n(40).b(2).l2(l2));
      std::mt19937_64 rng(4);
      run_vr(opt, prob, w, 7, rng, 2);  // mid-stage (m = 20)
      auto& group = opt.param_groups()[0].options();
      ASSERT_DOUBLE_EQ(group.get_lr(), 1.0 / (3.0 * L));
      group.set_lr(scale * group.get_lr());
      const double eta = group.get_lr();
      EXPECT_EQ(eta, scale / (3.0 * L));
      // The reference: x_{k+1}, v and the updated y and z from the state before the step.
      const auto& st = static_cast<KatyushaParamState&>(*opt.state().at(w.unsafeGetTensorImpl()));
      const double m = 20, b = 2, tau2 = 1 / (2 * b);
      const double tau1 = l2 > 0 ? std::min(std::sqrt(8 * b * m * l2 / (3 * L)) * tau2, 0.5) : 2.0 / (0 + 4);
      const auto x = tau1 * st.z() + tau2 * st.xt() + (1 - tau1 - tau2) * st.y();
      const auto z_before = st.z().clone();
      auto rng_ref = rng;
      std::uniform_int_distribution<int64_t> pick(0, 39);
      std::vector<int64_t> idx(2);
      for (auto& i : idx) i = pick(rng_ref);
      auto grad_at = [&](const at::Tensor& point) {
        auto q = point.detach().clone().requires_grad_();
        return torch::autograd::grad({prob.loss(q, torch::tensor(idx, torch::kLong))}, {q})[0];
      };
      const auto v = st.mu() + grad_at(x) - grad_at(st.xt());
      const auto y_ref = (x - eta * v) / (1 + eta * l2);
      const auto z_ref = (z_before - (eta / tau1) * v) / (1 + (eta / tau1) * l2);
      run_vr(opt, prob, w, 1, rng, 2);
      EXPECT_TRUE(torch::allclose(w.detach(), y_ref, 0, 1e-15)) << w << y_ref;
      EXPECT_TRUE(torch::allclose(st.z(), z_ref, 0, 1e-14)) << st.z() << z_ref;
      moves.push_back(w.detach() - x);
    }
    if (l2 == 0) EXPECT_TRUE(torch::allclose(moves[1], 0.5 * moves[0], 1e-13, 0)) << moves[0] << moves[1];
  }
}

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>
#include <sstream>

#include "logistic_problem.h"
#include "option_fields.h"
#include "sgdx/data/libsvm.h"
#include "sgdx/optim/svrg.h"
#include "test_util.h"

using sgdx::optim::SVRG;
using sgdx::optim::SVRGOptions;

namespace {
using sgdx::testing::Logistic;
using sgdx::testing::run_vr;

}  // namespace

TEST(ElasticNetProx, ClosedFormAndExactZeros) {
  auto v = torch::tensor({-3.0, -0.5, 0.0, 0.2, 2.0}, torch::kDouble);
  auto p = v.clone();
  sgdx::optim::elastic_net_prox_(p, 0.5, 1.0, 2.0);  // shrink by 0.5, then divide by 2
  EXPECT_TRUE(torch::allclose(p, torch::tensor({-1.25, 0.0, 0.0, 0.0, 0.75}, torch::kDouble), 0, 1e-15));
  EXPECT_EQ((p == 0).sum().item<int64_t>(), 3);
  auto q = v.clone();
  sgdx::optim::elastic_net_prox_(q, 0.5, 0.0, 0.0);
  EXPECT_TRUE(torch::equal(q, v));
  SGDX_EXPECT_THROW_MSG(sgdx::optim::elastic_net_prox_(q, 0.5, -1.0, 0.0), "l1=-1");
}

TEST(SVRG, FullBatchOneInnerStepIsGradientDescent) {
  Logistic prob(40, 5, 0, 0, 1);
  auto w = torch::zeros({5}, torch::kDouble).requires_grad_();
  auto ref = torch::zeros({5}, torch::kDouble).requires_grad_();
  SVRG opt({w}, SVRGOptions(2.0).n(40).b(40).m(1));
  opt.set_full_gradient_closure([&] {
    auto l = prob.loss(w, torch::arange(40));
    l.backward();
    return l;
  });
  for (int s = 0; s < 20; ++s) {
    opt.step([&] {
      auto l = prob.loss(w, torch::arange(40));
      l.backward();
      return l;
    });
    auto g = torch::autograd::grad({prob.loss(ref, torch::arange(40))}, {ref})[0];
    {
      torch::NoGradGuard ng;
      ref.sub_(2.0 * g);
    }
    ASSERT_TRUE(torch::allclose(w, ref, 0, 1e-14)) << "step " << s;
  }
  EXPECT_EQ(opt.gradient_evaluations(), 20 * (40 + 2 * 40));
  EXPECT_EQ(opt.stage(), 20);
}

// Linear convergence to the independent optimum on strongly convex problems, l1 = 0 and l1 > 0.
TEST(SVRG, ConvergesToTheFistaOptimum) {
  for (auto [l1, l2] : {std::pair{0.0, 1e-2}, std::pair{3e-2, 1e-2}}) {
    Logistic prob(200, 8, l1, l2, 2);
    const auto x_star = prob.fista(20000);
    const double p_star = prob.objective(x_star);
    for (auto rule : {sgdx::optim::SnapshotRule::last, sgdx::optim::SnapshotRule::random}) {
      auto w = torch::zeros({8}, torch::kDouble).requires_grad_();
      SVRG opt({w}, SVRGOptions(1.0).n(200).b(1).l1(l1).l2(l2).snapshot(rule).seed(3));
      std::mt19937_64 rng(5);
      run_vr(opt, prob, w, 400 * 25, rng, 1);
      const double gap = prob.objective(w.detach()) - p_star;
      EXPECT_LT(gap, 1e-10 * std::abs(p_star)) << "l1 " << l1 << " rule " << int(rule) << " gap " << gap;
      EXPECT_GT(gap, -1e-12);  // FISTA found the optimum: nothing is below it
      if (l1 > 0) {            // l1 gives exact zeros, where the optimum has them
        ASSERT_GT((x_star == 0).sum().item<int64_t>(), 0);
        EXPECT_TRUE(torch::equal(w.detach() == 0, x_star == 0)) << w << x_star;
      }
    }
  }
}

TEST(SVRG, SaveLoadMidStageResumesBitIdentically) {
  Logistic prob(60, 4, 1e-3, 1e-3, 3);
  auto w = torch::zeros({4}, torch::kDouble).requires_grad_();
  auto opts =
      SVRGOptions(0.5).n(60).b(3).snapshot(sgdx::optim::SnapshotRule::random).l1(1e-3).l2(1e-3).seed(9);
  SVRG a({w}, opts);
  std::mt19937_64 rng(1);
  run_vr(a, prob, w, 57, rng, 3);  // mid-stage: m = 40
  std::ostringstream buf;
  {
    torch::serialize::OutputArchive ar;
    a.save(ar);
    ar.save_to(buf);
  }
  auto w2 = w.detach().clone().requires_grad_();
  SVRG b({w2}, SVRGOptions(9.0).n(60));
  {
    std::istringstream in(buf.str());
    torch::serialize::InputArchive ar;
    ar.load_from(in);
    b.load(ar);
  }
  auto rng2 = rng;
  {
    auto& sa = static_cast<sgdx::optim::SVRGParamState&>(*a.state().at(w.unsafeGetTensorImpl()));
    auto& sb = static_cast<sgdx::optim::SVRGParamState&>(*b.state().at(w2.unsafeGetTensorImpl()));
    ASSERT_TRUE(torch::equal(sa.snapshot(), sb.snapshot())) << sa.snapshot() << sb.snapshot();
    ASSERT_TRUE(torch::equal(sa.full_grad(), sb.full_grad())) << sa.full_grad() << sb.full_grad();
    EXPECT_EQ(a.param_groups()[0].options().get_lr(), b.param_groups()[0].options().get_lr());
  }
  for (int k = 0; k < 100; ++k) {
    run_vr(a, prob, w, 1, rng, 3);
    run_vr(b, prob, w2, 1, rng2, 3);
    ASSERT_TRUE(torch::equal(w, w2)) << "step " << k << "\n" << w << w2;
  }
  EXPECT_EQ(a.gradient_evaluations(), b.gradient_evaluations());
}

// Every option reaches the checkpoint, under its name.
TEST(SVRG, EveryOptionFieldIsSaved) {
  auto w = torch::zeros({3}, torch::requires_grad());
  sgdx::testing::expect_every_field_round_trips(
      SVRGOptions(0.3).n(50).b(5).m(7).l1(1e-3).l2(2e-3).snapshot(sgdx::optim::SnapshotRule::random).seed(9),
      SVRGOptions(1.0).n(60), {"lr", "n", "b", "m", "l1", "l2", "snapshot", "seed"},
      [&](const SVRGOptions& o) { return std::make_unique<SVRG>(std::vector<at::Tensor>{w}, o); });
}

TEST(SVRG, ClearErrors) {
  auto w = torch::zeros({3}, torch::requires_grad());
  SGDX_EXPECT_THROW_MSG(SVRG({w}, SVRGOptions(0.1)), "n (the number of components) must be > 0, got 0");
  SGDX_EXPECT_THROW_MSG(SVRG({w}, SVRGOptions(0.1).n(10).b(11)),
                        "minibatch size b must be in [1, n = 10], got 11");
  SGDX_EXPECT_THROW_MSG(SVRG({w}, SVRGOptions(0.1).n(10).l1(-1)), "l1 must be >= 0, got -1");
  SGDX_EXPECT_THROW_MSG(SVRG({w}, SVRGOptions(0.1).n(10).l2(-0.5)), "l2 must be >= 0, got -0.5");
  SGDX_EXPECT_THROW_MSG(SVRG({w}, SVRGOptions(-0.1).n(10)), "lr must be > 0, got -0.1");
  SVRG opt({w}, SVRGOptions(0.1).n(10));
  SGDX_EXPECT_THROW_MSG(opt.step([] { return torch::zeros({}); }),
                        "call set_full_gradient_closure() before step()");
  SGDX_EXPECT_THROW_MSG(opt.step(nullptr), "needs the minibatch closure");
}

TEST(Libsvm, ReadsSparseTextAndReportsMalformedLines) {
  sgdx::testing::TempDir dir;
  std::ofstream(dir.file("ok")) << "+1 1:0.5 3:2\n-1 2:1\n\n0 4:-1.5\n";
  auto d = sgdx::data::read_libsvm(dir.file("ok"));
  EXPECT_EQ(d.features.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({1.0, -1.0, -1.0}, torch::kDouble)));
  EXPECT_TRUE(torch::equal(
      d.features, torch::tensor({0.5, 0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.5}, torch::kDouble)
                      .reshape({3, 4})));
  EXPECT_EQ(sgdx::data::read_libsvm(dir.file("ok"), 10).features.size(1), 10);
  auto f = d.features.clone();
  sgdx::data::normalize_rows_(f);
  EXPECT_TRUE(torch::allclose(at::linalg_vector_norm(f, 2, {1}), torch::ones({3}, torch::kDouble)));
  std::ofstream(dir.file("bad1")) << "+1 1:1\n2 1:1\n";
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("bad1")),
                        "line 2: label must be +1, -1 or 0/1, got 2");
  std::ofstream(dir.file("bad2")) << "+1 3:1 2:1\n";
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("bad2")),
                        "line 1: feature indices must increase, got 3 then 2");
  std::ofstream(dir.file("bad3")) << "-1 1:1\n+1 7\n";
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("bad3")), "line 2: expected 'index:value'");
  std::ofstream(dir.file("bad4")) << "-1 0:1\n";
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("bad4")), "feature index must be >= 1, got 0");
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("ok"), 3), "feature index 4 exceeds num_features 3");
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("missing")), "cannot open LIBSVM file");
}

TEST(Libsvm, SharedA9aWhenPresent) {
  const auto root = sgdx::testing::data_dir();
  if (root.empty() || !std::filesystem::exists(root + "/libsvm/a9a"))
    GTEST_SKIP() << "SGDX_DATA_DIR/libsvm/a9a absent";
  auto train = sgdx::data::read_libsvm(root + "/libsvm/a9a");
  EXPECT_EQ(train.features.sizes(), (std::vector<int64_t>{32561, 123}));
  EXPECT_EQ((train.labels > 0).sum().item<int64_t>(), 7841);  // shared/data/README.md
  EXPECT_EQ((train.features != 0).sum().item<int64_t>(), 451592);
  auto test = sgdx::data::read_libsvm(root + "/libsvm/a9a.t", 123);
  EXPECT_EQ(test.features.sizes(), (std::vector<int64_t>{16281, 123}));
  EXPECT_EQ((test.labels > 0).sum().item<int64_t>(), 3846);
}

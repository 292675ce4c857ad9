#include <gtest/gtest.h>
#include <torch/optim/schedulers/step_lr.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "option_fields.h"
#include "rsgd_reference.h"
#include "sgdx/detail/philox.h"
#include "sgdx/optim/rsgd.h"
#include "test_util.h"

using sgdx::optim::RSGD;
using sgdx::optim::RSGDGranularity;
using sgdx::optim::RSGDMemory;
using sgdx::optim::RSGDOptions;

namespace {

using sgdx::testing::ReferenceRSGD;

std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kDouble).contiguous().flatten();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Runs `steps` steps with fixed pseudo-random gradients on two tensors of
// odd sizes (not multiples of 4) and compares against the reference.
void expect_matches_reference(RSGDOptions opts, int steps) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> params = {torch::randn({7, 5}, torch::kDouble).requires_grad_(),
                                       torch::randn({13}, torch::kDouble).requires_grad_()};
  std::vector<std::vector<double>> ref_params = {to_vec(params[0]), to_vec(params[1])};
  RSGD opt(params, opts);
  ReferenceRSGD ref(opts);
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<double>> grads;
    for (auto& p : params) {
      p.mutable_grad() = torch::randn_like(p);
      grads.push_back(to_vec(p.grad()));
    }
    opt.step();
    ref.step(ref_params, grads);
    for (size_t k = 0; k < params.size(); ++k) {
      const auto got = to_vec(params[k]);
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], ref_params[k][i], 1e-12 * (1 + std::abs(ref_params[k][i])))
            << "step " << s + 1 << " tensor " << k << " element " << i;
      }
    }
  }
}

}  // namespace

TEST(RSGD, OptionsHaveSpecDefaults) {
  RSGDOptions o(0.1);
  EXPECT_EQ(o.lr(), 0.1);
  EXPECT_EQ(o.gamma(), 0.999);
  EXPECT_EQ(o.gamma0(), 1.0);
  EXPECT_EQ(o.max_prob(), 0.9);  // chosen from the sweep (docs/rsgd.md), not the literal 1
  EXPECT_EQ(o.granularity(), RSGDGranularity::element);
  EXPECT_EQ(o.memory(), RSGDMemory::accumulated);
  EXPECT_EQ(o.weight_decay(), 0.0);
  EXPECT_EQ(o.seed(), 0u);
  EXPECT_DOUBLE_EQ(o.reinforcement_probability(1), 1.0 - 0.999);
  EXPECT_DOUBLE_EQ(RSGDOptions(0.1).max_prob(0.3).reinforcement_probability(100000), 0.3);
}

TEST(RSGD, ConstructorRejectsBadOptionsWithValue) {
  auto p = torch::zeros({2}, torch::requires_grad());
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(-0.1)), "lr must be >= 0, got -0.1");
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(0.1).gamma(0.0)), "gamma must be in (0, 1), got 0");
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(0.1).gamma(1.0)), "gamma must be in (0, 1), got 1");
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(0.1).gamma(1.5)), "gamma must be in (0, 1), got 1.5");
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(0.1).gamma0(1.5)), "gamma0 must be in [0, 1], got 1.5");
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(0.1).max_prob(-0.5)), "max_prob must be in [0, 1], got -0.5");
  SGDX_EXPECT_THROW_MSG(RSGD({p}, RSGDOptions(0.1).weight_decay(-1)), "weight_decay must be >= 0, got -1");
  // A bad option in an explicit group is caught too.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{p},
                      std::make_unique<RSGDOptions>(RSGDOptions(0.1).gamma(2)));
  SGDX_EXPECT_THROW_MSG(RSGD(groups, RSGDOptions(0.1)), "gamma must be in (0, 1), got 2");
}

TEST(RSGD, MatchesFloat64ReferenceElementAccumulated) {
  expect_matches_reference(RSGDOptions(0.05).gamma(0.8).seed(11), 25);
}
TEST(RSGD, MatchesFloat64ReferenceElementPreviousWithDecay) {
  expect_matches_reference(
      RSGDOptions(0.05).gamma(0.7).memory(RSGDMemory::previous).weight_decay(0.01).seed(5), 25);
}
TEST(RSGD, MatchesFloat64ReferenceTensorGranularity) {
  expect_matches_reference(RSGDOptions(0.05).gamma(0.9).granularity(RSGDGranularity::tensor).seed(2), 40);
}
TEST(RSGD, MatchesFloat64ReferenceWithCapAndScale) {
  expect_matches_reference(RSGDOptions(0.02).gamma(0.5).gamma0(0.6).max_prob(0.7).weight_decay(0.1).seed(9),
                           25);
}

TEST(RSGD, MaxProbZeroIsPlainSGD) {
  torch::manual_seed(0);
  auto a = torch::randn({33, 3}, torch::kDouble).requires_grad_();
  auto b = a.detach().clone().requires_grad_();
  RSGD rsgd({a}, RSGDOptions(0.1).max_prob(0.0).weight_decay(0.01));
  torch::optim::SGD sgd({b}, torch::optim::SGDOptions(0.1).weight_decay(0.01));
  for (int s = 0; s < 20; ++s) {
    auto g = torch::randn_like(a);
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    rsgd.step();
    sgd.step();
    ASSERT_TRUE(torch::allclose(a, b, /*rtol=*/0, /*atol=*/1e-15)) << "step " << s;
  }
}

TEST(RSGD, Gamma0ZeroIsHeavyBallWithMomentumOne) {
  torch::manual_seed(1);
  auto a = torch::randn({17}, torch::kDouble).requires_grad_();
  auto b = a.detach().clone().requires_grad_();
  RSGD rsgd({a}, RSGDOptions(0.01).gamma0(0.0).max_prob(1.0));
  torch::optim::SGD sgd({b}, torch::optim::SGDOptions(0.01).momentum(1.0).dampening(0.0));
  for (int s = 0; s < 30; ++s) {
    auto g = torch::randn_like(a);
    a.mutable_grad() = g.clone();
    b.mutable_grad() = g.clone();
    rsgd.step();
    sgd.step();
    ASSERT_TRUE(torch::allclose(a, b, /*rtol=*/1e-13, /*atol=*/1e-14)) << "step " << s;
  }
}

// E[h_t] = g_t + Gamma_t E[h_{t-1}] for memory=accumulated with gradients that
// do not depend on the draws. Every element is an independent sample; over
// 40 seeds x 2048 elements the sample mean must lie within 5 standard errors.
TEST(RSGD, ExpectationIsMomentumWithCoefficientGammaT) {
  for (auto granularity : {RSGDGranularity::element, RSGDGranularity::tensor}) {
    const int steps = 30, seeds = 40;
    const int64_t n = granularity == RSGDGranularity::element ? 2048 : 1;
    const int tensors = granularity == RSGDGranularity::element ? 1 : 512;
    auto opts = RSGDOptions(0.0).gamma(0.9).granularity(granularity);
    std::vector<double> g_seq(steps);
    for (int t = 0; t < steps; ++t) g_seq[t] = 1.0 + 0.5 * std::sin(0.7 * t);
    std::vector<double> sum(steps, 0.0), sum_sq(steps, 0.0);
    int64_t samples = 0;
    for (int seed = 0; seed < seeds; ++seed) {
      std::vector<torch::Tensor> params;
      for (int k = 0; k < tensors; ++k) params.push_back(torch::zeros({n}, torch::kDouble).requires_grad_());
      RSGD opt(params, RSGDOptions(opts).seed(static_cast<uint64_t>(seed) * 7919 + 1));
      for (int t = 0; t < steps; ++t) {
        for (auto& p : params) p.mutable_grad() = torch::full({n}, g_seq[t], torch::kDouble);
        opt.step();
        for (auto& p : params) {
          auto h =
              static_cast<sgdx::optim::RSGDParamState&>(*opt.state().at(p.unsafeGetTensorImpl())).memory();
          sum[t] += h.sum().item<double>();
          sum_sq[t] += h.pow(2).sum().item<double>();
        }
      }
      samples += n * tensors;
    }
    double expected = 0.0;
    for (int t = 0; t < steps; ++t) {
      expected = g_seq[t] + opts.reinforcement_probability(t + 1) * expected;
      const double mean = sum[t] / samples;
      const double var = std::max(sum_sq[t] / samples - mean * mean, 0.0);
      const double se = std::sqrt(var / samples);
      EXPECT_NEAR(mean, expected, 5 * se + 1e-12) << "granularity " << int(granularity) << " step " << t + 1;
    }
  }
}

TEST(RSGD, TensorGranularityDrawsOncePerTensor) {
  auto p = torch::zeros({1000}, torch::kDouble).requires_grad_();
  RSGD opt({p}, RSGDOptions(0.0).gamma(0.5).granularity(RSGDGranularity::tensor).seed(3));
  for (int t = 0; t < 20; ++t) {
    p.mutable_grad() = torch::ones({1000}, torch::kDouble);
    opt.step();
    auto h = static_cast<sgdx::optim::RSGDParamState&>(*opt.state().at(p.unsafeGetTensorImpl())).memory();
    EXPECT_EQ(h.min().item<double>(), h.max().item<double>()) << "step " << t + 1;
  }
}

TEST(RSGD, SameSeedSameTrajectoryDifferentSeedDiffers) {
  auto run = [](uint64_t seed) {
    torch::manual_seed(0);
    auto p = torch::randn({257}).requires_grad_();
    RSGD opt({p}, RSGDOptions(0.01).gamma(0.9).seed(seed));
    for (int s = 0; s < 15; ++s) {
      p.mutable_grad() = torch::sin(p.detach() * (s + 1));
      opt.step();
    }
    return p.detach().clone();
  };
  EXPECT_TRUE(torch::equal(run(42), run(42)));
  EXPECT_FALSE(torch::equal(run(42), run(43)));
}

TEST(RSGD, SaveLoadMidRunResumesBitIdentically) {
  auto make_grad = [](const torch::Tensor& p, int s) { return torch::cos(p.detach() * 3 + s); };
  torch::manual_seed(5);
  auto init = torch::randn({19, 4});
  for (auto memory : {RSGDMemory::accumulated, RSGDMemory::previous}) {
    auto opts = RSGDOptions(0.02).gamma(0.85).memory(memory).seed(77);
    auto a = init.clone().requires_grad_();
    RSGD oa({a}, opts);
    for (int s = 0; s < 10; ++s) {
      a.mutable_grad() = make_grad(a, s);
      oa.step();
    }
    std::ostringstream buf;
    {
      torch::serialize::OutputArchive ar;
      oa.save(ar);
      ar.save_to(buf);
    }
    auto b = a.detach().clone().requires_grad_();
    RSGD ob({b}, RSGDOptions(1.0));  // other options: load must restore them
    {
      std::istringstream in(buf.str());
      torch::serialize::InputArchive ar;
      ar.load_from(in);
      ob.load(ar);
    }
    EXPECT_EQ(static_cast<RSGDOptions&>(ob.param_groups()[0].options()), opts);
    for (int s = 10; s < 25; ++s) {
      a.mutable_grad() = make_grad(a, s);
      b.mutable_grad() = make_grad(b, s);
      oa.step();
      ob.step();
    }
    EXPECT_TRUE(torch::equal(a, b));
  }
}

TEST(RSGD, LRSchedulerDrivesIt) {
  auto p = torch::zeros({4}, torch::kDouble).requires_grad_();
  RSGD opt({p}, RSGDOptions(1.0).max_prob(0.0));
  torch::optim::StepLR sched(opt, /*step_size=*/1, /*gamma=*/0.5);
  // LibTorch's StepLR skips the decay on its first step() (PyTorch's
  // constructor takes that step), so the lr stays 1.0 for two steps.
  std::vector<double> expected_lr = {1.0, 1.0, 0.5, 0.25, 0.125};
  double position = 0.0;
  for (double lr : expected_lr) {
    EXPECT_DOUBLE_EQ(opt.param_groups()[0].options().get_lr(), lr);
    p.mutable_grad() = torch::ones({4}, torch::kDouble);
    opt.step();
    position -= lr;
    EXPECT_DOUBLE_EQ(p[0].item<double>(), position);
    sched.step();
  }
}

TEST(RSGD, PerGroupOptionsSurviveConstruction) {
  auto a = torch::zeros({3}, torch::requires_grad());
  auto b = torch::zeros({3}, torch::requires_grad());
  auto c = torch::zeros({3}, torch::requires_grad());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{a});
  groups.emplace_back(
      std::vector<torch::Tensor>{b},
      std::make_unique<RSGDOptions>(RSGDOptions(0.5).gamma(0.9).seed(7).memory(RSGDMemory::previous)));
  auto defaults = RSGDOptions(0.1).max_prob(0.8);
  RSGD opt(groups, defaults);
  ASSERT_EQ(opt.param_groups().size(), 2u);
  EXPECT_EQ(static_cast<RSGDOptions&>(opt.param_groups()[0].options()), defaults);
  EXPECT_EQ(static_cast<RSGDOptions&>(opt.param_groups()[1].options()),
            RSGDOptions(0.5).gamma(0.9).seed(7).memory(RSGDMemory::previous));
  opt.add_param_group(
      torch::optim::OptimizerParamGroup({c}, std::make_unique<RSGDOptions>(RSGDOptions(0.25))));
  EXPECT_EQ(opt.param_groups()[2].options().get_lr(), 0.25);
  // The group's lr is the one used.
  for (auto* p : {&a, &b, &c}) p->mutable_grad() = torch::ones({3});
  opt.step();
  EXPECT_FLOAT_EQ(a[0].item<float>(), -0.1f);
  EXPECT_FLOAT_EQ(b[0].item<float>(), -0.5f);
  EXPECT_FLOAT_EQ(c[0].item<float>(), -0.25f);
}

TEST(RSGD, ClosureLossReturnedAndUndefinedGradsSkipped) {
  auto w = torch::ones({2}, torch::requires_grad());
  auto frozen = torch::ones({2}, torch::requires_grad());
  RSGD opt({w, frozen}, RSGDOptions(0.1));
  auto loss = opt.step([&] {
    opt.zero_grad();
    auto l = (w * w).sum();
    l.backward();
    return l;
  });
  EXPECT_DOUBLE_EQ(loss.item<double>(), 2.0);
  EXPECT_TRUE(torch::allclose(w, torch::full({2}, 0.8)));
  EXPECT_TRUE(torch::equal(frozen, torch::ones({2})));
  EXPECT_EQ(opt.state().count(frozen.unsafeGetTensorImpl()), 0u);
}

TEST(RSGD, NonContiguousParameterIsUpdatedInPlace) {
  auto base = torch::zeros({4, 6}, torch::kDouble);
  auto p = base.t().requires_grad_();  // a non-contiguous leaf
  ASSERT_FALSE(p.is_contiguous());
  RSGD opt({p}, RSGDOptions(0.5).max_prob(0.0));
  p.mutable_grad() = torch::arange(24, torch::kDouble).reshape({6, 4});
  opt.step();
  EXPECT_TRUE(torch::allclose(p, -0.5 * torch::arange(24, torch::kDouble).reshape({6, 4})));
}

TEST(RSGD, HalfAndBFloat16MatchFloat32Within1e2) {
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    torch::manual_seed(4);
    auto a = torch::randn({301}).requires_grad_();
    auto b = a.detach().to(dtype).requires_grad_();
    RSGD oa({a}, RSGDOptions(0.01).gamma(0.8).seed(1));
    RSGD ob({b}, RSGDOptions(0.01).gamma(0.8).seed(1));
    for (int s = 0; s < 10; ++s) {
      auto g = torch::randn({301});
      a.mutable_grad() = g;
      b.mutable_grad() = g.to(dtype);
      oa.step();
      ob.step();
    }
    EXPECT_TRUE(torch::allclose(b.to(torch::kFloat), a, 2e-2, 2e-2)) << dtype;
  }
}

TEST(RSGD, ConvergesOnLeastSquares) {
  torch::manual_seed(0);
  auto x = torch::randn({256, 10});
  auto w_true = torch::randn({10, 1});
  auto y = x.mm(w_true);
  auto w = torch::zeros({10, 1}, torch::requires_grad());
  RSGD opt({w}, RSGDOptions(0.01).gamma(0.99).max_prob(0.9));
  for (int s = 0; s < 500; ++s) {
    opt.zero_grad();
    auto loss = (x.mm(w) - y).pow(2).mean();
    loss.backward();
    opt.step();
  }
  EXPECT_LT((w - w_true).norm().item<double>(), 1e-3);
}

TEST(RSGD, RejectsSparseAndMismatchedGradients) {
  auto p = torch::zeros({4}, torch::requires_grad());
  RSGD opt({p}, RSGDOptions(0.1));
  p.mutable_grad() = torch::zeros({4}, torch::kDouble);
  SGDX_EXPECT_THROW_MSG(opt.step(), "gradient dtype Double differs from parameter dtype Float");
  p.mutable_grad() = torch::zeros({4}).to_sparse();
  SGDX_EXPECT_THROW_MSG(opt.step(), "sparse gradients are not supported");
}

// Options: fused_cuda (how this process computes) is kept, not loaded, like a backend.
TEST(RSGD, FusedCudaOptionIsNotTakenFromCheckpoints) {
  auto p = torch::randn({4}).requires_grad_(true);
  sgdx::optim::RSGD a({p}, sgdx::optim::RSGDOptions(0.1).fused_cuda(true));
  std::ostringstream blob;
  torch::serialize::OutputArchive out;
  a.save(out);
  out.save_to(blob);
  sgdx::optim::RSGD b({p}, sgdx::optim::RSGDOptions(0.5));
  torch::serialize::InputArchive in;
  std::istringstream s(blob.str());
  in.load_from(s);
  b.load(in);
  const auto& o = static_cast<const sgdx::optim::RSGDOptions&>(b.param_groups()[0].options());
  EXPECT_FALSE(o.fused_cuda());
  EXPECT_EQ(o.lr(), 0.1);
}

#if SGDX_WITH_CUDA
// The default CUDA path (ATen composition) and the fused kernel make no synchronising call.
TEST(RSGDCuda, StepDoesNotSynchronise) {
  SGDX_REQUIRE_CUDA();
  for (const bool fused : {false, true}) {
    auto p = torch::randn({1000, 3}, torch::kCUDA).requires_grad_(true);
    sgdx::optim::RSGD opt({p}, sgdx::optim::RSGDOptions(0.1).max_prob(0.5).fused_cuda(fused));
    p.mutable_grad() = torch::randn_like(p);
    opt.step();  // state allocation outside the counted step
    sgdx::testing::SyncCounter syncs;
    opt.step();
    EXPECT_EQ(syncs.syncs, 0) << "fused " << fused;
  }
}
#endif

// Every option but fused_cuda reaches the checkpoint, under its name.
TEST(RSGD, EveryOptionFieldIsSaved) {
  auto p = torch::zeros({3}, torch::requires_grad());
  sgdx::testing::expect_every_field_round_trips(
      RSGDOptions(0.3)
          .gamma(0.5)
          .gamma0(0.4)
          .max_prob(0.6)
          .granularity(RSGDGranularity::tensor)
          .memory(RSGDMemory::previous)
          .weight_decay(0.2)
          .seed(123),
      RSGDOptions(1.0),
      {"lr", "gamma", "gamma0", "max_prob", "granularity", "memory", "weight_decay", "seed"},
      [&](const RSGDOptions& o) { return std::make_unique<RSGD>(std::vector<torch::Tensor>{p}, o); });
}

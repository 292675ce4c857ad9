#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sgdx/detail/philox.h"
#include "sgdx/ops/rsgd_step.h"
#include "test_util.h"

using sgdx::ops::RSGDStepConfig;

// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
TEST(Philox, KnownAnswerVectors) {
  auto r = sgdx::detail::philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
  r = sgdx::detail::philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu,
                                  0xffffffffu);
  EXPECT_EQ(r.v[0], 0x408f276du);
  EXPECT_EQ(r.v[1], 0x41c83b0eu);
  EXPECT_EQ(r.v[2], 0xa20bc7c6u);
  EXPECT_EQ(r.v[3], 0x6d5451fdu);
  r = sgdx::detail::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u,
                                  0x299f31d0u);
  EXPECT_EQ(r.v[0], 0xd16cfe09u);
  EXPECT_EQ(r.v[1], 0x94fdccebu);
  EXPECT_EQ(r.v[2], 0x5001e420u);
  EXPECT_EQ(r.v[3], 0x24126ea1u);
}

TEST(Philox, BernoulliThresholdEdges) {
  EXPECT_EQ(sgdx::detail::bernoulli_threshold(0.0), 0u);
  EXPECT_EQ(sgdx::detail::bernoulli_threshold(-1.0), 0u);
  EXPECT_EQ(sgdx::detail::bernoulli_threshold(1.0), uint64_t{1} << 32);
  EXPECT_EQ(sgdx::detail::bernoulli_threshold(0.5), uint64_t{1} << 31);
}

// Draw frequencies of the per-element high bytes: chi-square over 256 bins,
// 2^18 bytes; the 0.999 quantile of chi2(255) is 330.5.
TEST(Philox, HighBytesAreUniform) {
  std::vector<int64_t> bins(256, 0);
  for (uint64_t b = 0; b < (1u << 14); ++b) {
    const auto r = sgdx::detail::rsgd_high_block(12345, 3, 17, b);
    for (int j = 0; j < 16; ++j) ++bins[sgdx::detail::rsgd_high_byte(r, j)];
  }
  const double expected = double(1 << 18) / 256;
  double chi2 = 0;
  for (auto c : bins) chi2 += (c - expected) * (c - expected) / expected;
  EXPECT_LT(chi2, 330.5);
}

// Thresholds whose top byte is hit often exercise the low-bit resolution: the
// frequency of xi must match Gamma exactly in expectation (5 sigma).
TEST(Philox, DrawFrequencyMatchesProbabilityAtByteBoundaries) {
  for (double prob : {0.5, 0.5 + 0.5 / 256, 1.0 / 256 + 1e-4, 0.999, 1e-3}) {
    const auto threshold = sgdx::detail::bernoulli_threshold(prob);
    const int64_t n = 1 << 20;
    int64_t hits = 0;
    for (int64_t i = 0; i < n; ++i)
      hits += sgdx::detail::rsgd_draw(7, 1, 2, static_cast<uint64_t>(i), threshold);
    EXPECT_NEAR(double(hits) / n, prob, 5 * std::sqrt(prob * (1 - prob) / n)) << prob;
  }
}

// Among elements whose high byte equals the threshold's, xi is decided by the
// low 24 bits: its frequency must be (threshold mod 2^24) / 2^24 (5 sigma).
TEST(Philox, LowBitsDecideTies) {
  for (double prob : {0.5 + 0.5 / 256, 0.25 + 0.1 / 256}) {
    const auto threshold = sgdx::detail::bernoulli_threshold(prob);
    const uint32_t t_high = static_cast<uint32_t>(threshold >> 24);
    const double p_low = double(threshold & 0xffffff) / double(1 << 24);
    int64_t ties = 0, hits = 0;
    for (uint64_t b = 0; b < (1u << 16); ++b) {
      const auto r = sgdx::detail::rsgd_high_block(3, 4, 5, b);
      for (int j = 0; j < 16; ++j) {
        if (sgdx::detail::rsgd_high_byte(r, j) != t_high) continue;
        ++ties;
        hits += sgdx::detail::rsgd_draw(3, 4, 5, 16 * b + j, threshold);
      }
    }
    ASSERT_GT(ties, 3000);
    EXPECT_NEAR(double(hits) / ties, p_low, 5 * std::sqrt(p_low * (1 - p_low) / ties)) << prob;
  }
}

TEST(RSGDStep, ValidatesInputsWithClearMessages) {
  auto p = torch::zeros({4});
  auto g = torch::zeros({4});
  auto m = torch::zeros({4});
  RSGDStepConfig c;
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({p}, {g}, {}, {0}, {1}, {0.5}, c),
                        "all lists must have the same length");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({p}, {torch::zeros({5})}, {m}, {0}, {1}, {0.5}, c),
                        "shape mismatch");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({p}, {g.to(torch::kDouble)}, {m}, {0}, {1}, {0.5}, c),
                        "dtype mismatch");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({p}, {g}, {m}, {0}, {0}, {0.5}, c),
                        "step must be in [1, 2^32), got 0");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({p}, {g}, {m}, {0}, {1}, {1.5}, c),
                        "probability must be in [0, 1], got 1.5");
  SGDX_EXPECT_THROW_MSG(
      sgdx::ops::rsgd_step_({torch::zeros({4}, torch::kLong)}, {g}, {m}, {0}, {1}, {0.5}, c),
      "must be floating point");
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_({torch::zeros({4, 4}).t()}, {torch::zeros({4, 4})},
                                              {torch::zeros({4, 4})}, {0}, {1}, {0.5}, c),
                        "must be contiguous");
}

TEST(RSGDStep, EmptyAndSingleElementTensors) {
  auto p = torch::ones({0});
  auto g = torch::ones({0});
  auto m = torch::ones({0});
  RSGDStepConfig c;
  c.lr = 0.5;
  sgdx::ops::rsgd_step_({p}, {g}, {m}, {0}, {1}, {1.0}, c);
  auto p1 = torch::full({1}, 2.0, torch::kDouble);
  auto g1 = torch::full({1}, 1.0, torch::kDouble);
  auto m1 = torch::full({1}, 3.0, torch::kDouble);
  sgdx::ops::rsgd_step_({p1}, {g1}, {m1}, {0}, {1}, {1.0}, c);  // always reinforce
  EXPECT_DOUBLE_EQ(p1.item<double>(), 2.0 - 0.5 * 4.0);
  EXPECT_DOUBLE_EQ(m1.item<double>(), 4.0);
}

// The per-element pattern of float32 and float64 paths comes from the same stream.
TEST(RSGDStep, SameDrawsForEveryDtype) {
  RSGDStepConfig c;
  c.lr = 0.0;
  c.seed = 99;
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    auto pd = torch::zeros({1001}, torch::kDouble), gd = torch::ones({1001}, torch::kDouble),
         md = torch::ones({1001}, torch::kDouble);
    auto p = pd.to(dtype), g = gd.to(dtype), m = md.to(dtype);
    sgdx::ops::rsgd_step_({pd}, {gd}, {md}, {4}, {9}, {0.37}, c);
    sgdx::ops::rsgd_step_({p}, {g}, {m}, {4}, {9}, {0.37}, c);
    EXPECT_TRUE(torch::equal(m.to(torch::kDouble), md)) << dtype;
    const double frac = (md == 2.0).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(frac, 0.37, 5 * std::sqrt(0.37 * 0.63 / 1001));
  }
}

// ---- The ATen composition (the verified default on CUDA), run here on CPU tensors.

namespace {
// The rule in float64 from given draws: g = grad + wd p; h = g + xi m; p -= lr h; m = h or g.
void rsgd_reference(at::Tensor& p, const at::Tensor& grad, at::Tensor& m, const at::Tensor& xi,
                    const RSGDStepConfig& c) {
  auto g = grad.to(at::kDouble) + c.weight_decay * p;
  auto h = g + xi.to(at::kDouble) * m;
  p = p - c.lr * h;
  m = c.memory_previous ? g : h;
}
}  // namespace

TEST(RSGDAtenPath, MatchesFloat64ReferenceGivenItsDraws) {
  for (auto dt : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (bool previous : {false, true}) {
      at::manual_seed(3);
      RSGDStepConfig c;
      c.lr = 0.05;
      c.weight_decay = 0.01;
      c.seed = 99;
      c.memory_previous = previous;
      const int64_t n = 1037;
      auto p = at::randn({n}).to(dt), g = at::randn({n}).to(dt), m = at::randn({n}).to(dt);
      auto p64 = p.to(at::kDouble), m64 = m.to(at::kDouble);
      bool all = false;
      const auto xi = sgdx::ops::detail::rsgd_aten_draws(p, 4, 7, 0.3, c, &all);
      ASSERT_TRUE(xi.defined());
      ASSERT_EQ(xi.scalar_type(), at::kBool);
      rsgd_reference(p64, g, m64, xi, c);
      std::vector<at::Tensor> ps{p}, gs{g}, ms{m};
      sgdx::ops::rsgd_step_aten_(ps, gs, ms, {4}, {7}, {0.3}, c);
      // One rounding of the stored value (float32 opmath for half/bfloat16).
      const double tol = dt == at::kDouble  ? 1e-14
                         : dt == at::kFloat ? 2e-6
                         : dt == at::kHalf  ? 2e-3
                                            : 1.6e-2;
      EXPECT_TRUE(at::allclose(p.to(at::kDouble), p64, tol, tol)) << dt << " previous " << previous;
      EXPECT_TRUE(at::allclose(m.to(at::kDouble), m64, tol, tol)) << dt << " previous " << previous;
    }
  }
}

// The draws are a function of (seed, tensor id, step) alone: equal for equal keys,
// different otherwise, independent of torch's global generator, which they leave untouched.
TEST(RSGDAtenPath, DrawsAreDeterminedBySeedTensorAndStep) {
  RSGDStepConfig c;
  c.seed = 5;
  const auto like = at::empty({4096});
  bool all = false;
  at::manual_seed(1);
  const auto state = at::detail::getDefaultCPUGenerator().get_state();
  const auto a = sgdx::ops::detail::rsgd_aten_draws(like, 2, 10, 0.5, c, &all);
  EXPECT_TRUE(at::equal(at::detail::getDefaultCPUGenerator().get_state(), state)) << "global generator moved";
  at::manual_seed(12345);
  EXPECT_TRUE(at::equal(a, sgdx::ops::detail::rsgd_aten_draws(like, 2, 10, 0.5, c, &all)));
  EXPECT_FALSE(at::equal(a, sgdx::ops::detail::rsgd_aten_draws(like, 3, 10, 0.5, c, &all)));
  EXPECT_FALSE(at::equal(a, sgdx::ops::detail::rsgd_aten_draws(like, 2, 11, 0.5, c, &all)));
  auto c2 = c;
  c2.seed = 6;
  EXPECT_FALSE(at::equal(a, sgdx::ops::detail::rsgd_aten_draws(like, 2, 10, 0.5, c2, &all)));
  EXPECT_NE(sgdx::ops::detail::rsgd_aten_seed(5, 2, 10), sgdx::ops::detail::rsgd_aten_seed(5, 10, 2));
}

// Bernoulli(prob) frequencies over 2^20 draws within 5 sigma.
TEST(RSGDAtenPath, DrawFrequencyMatchesProbability) {
  RSGDStepConfig c;
  c.seed = 11;
  const auto like = at::empty({1 << 20});
  for (double prob : {1e-3, 0.3, 0.5, 0.999}) {
    bool all = false;
    const auto xi = sgdx::ops::detail::rsgd_aten_draws(like, 1, 1, prob, c, &all);
    const double f = xi.to(at::kDouble).mean().item<double>();
    EXPECT_NEAR(f, prob, 5 * std::sqrt(prob * (1 - prob) / like.numel())) << prob;
  }
}

// Without randomness the ATen path is the CPU kernel's rule: Gamma 0 is SGD, Gamma 1
// heavy ball, and one draw per tensor is the CPU kernel's own draw.
TEST(RSGDAtenPath, DeterministicCasesAndTensorGranularityEqualTheCpuKernel) {
  for (double prob : {0.0, 1.0, 0.4}) {
    for (bool per_element : {true, false}) {
      if (prob == 0.4 && per_element) continue;  // per-element draws: another stream
      at::manual_seed(8);
      RSGDStepConfig c;
      c.lr = 0.1;
      c.weight_decay = 0.001;
      c.seed = 21;
      c.per_element = per_element;
      std::vector<at::Tensor> pa, ga, ma, pb, gb, mb;
      std::vector<int64_t> ids, steps;
      std::vector<double> probs;
      for (int64_t k = 0; k < 6; ++k) {
        auto p = at::randn({100 + 37 * k}, at::kDouble), g = at::randn_like(p), m = at::randn_like(p);
        pa.push_back(p.clone()), ga.push_back(g), ma.push_back(m.clone());
        pb.push_back(p.clone()), gb.push_back(g), mb.push_back(m.clone());
        ids.push_back(k), steps.push_back(3), probs.push_back(prob);
      }
      sgdx::ops::rsgd_step_cpu_(pa, ga, ma, ids, steps, probs, c);
      sgdx::ops::rsgd_step_aten_(pb, gb, mb, ids, steps, probs, c);
      for (size_t k = 0; k < pa.size(); ++k) {
        EXPECT_TRUE(at::allclose(pa[k], pb[k], 1e-14, 1e-14)) << prob << " " << per_element << " " << k;
        EXPECT_TRUE(at::allclose(ma[k], mb[k], 1e-14, 1e-14)) << prob << " " << per_element << " " << k;
      }
    }
  }
}

TEST(RSGDAtenPath, ValidatesLikeTheKernels) {
  RSGDStepConfig c;
  std::vector<at::Tensor> p{at::zeros({3})}, g{at::zeros({4})}, m{at::zeros({3})};
  SGDX_EXPECT_THROW_MSG(sgdx::ops::rsgd_step_aten_(p, g, m, {0}, {1}, {0.5}, c), "shape mismatch");
}

// The crop-and-flip augmentation against a per-pixel reference written from its
// definition (pad with zeros, cut the window, mirror), and its draws against their
// distribution (chi-square and binomial bounds) and their determinism.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "sgdx/data/augment.h"
#include "test_util.h"

namespace {

using sgdx::data::CropFlipOptions;

// out[i, c, y, x] = padded image i at (dy + y, dx + x'), x' = W-1-x when flipped;
// padded(u, v) = image(u - p, v - p) inside, 0 outside. Float64, one pixel at a time.
at::Tensor reference(const at::Tensor& images, const sgdx::data::CropFlipDraws& d, int64_t p) {
  auto in = images.to(torch::kDouble).contiguous();
  const int64_t n = in.size(0), c = in.size(1), h = in.size(2), w = in.size(3);
  auto out = torch::empty_like(in);
  auto a = in.accessor<double, 4>();
  auto o = out.accessor<double, 4>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t dy = d.dy[i].item<int64_t>(), dx = d.dx[i].item<int64_t>();
    const bool flip = d.flip[i].item<int64_t>() != 0;
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const int64_t u = dy + y - p, v = dx + (flip ? w - 1 - x : x) - p;
          o[i][ch][y][x] = (u >= 0 && u < h && v >= 0 && v < w) ? a[i][ch][u][v] : 0.0;
        }
  }
  return out;
}

}  // namespace

TEST(CropFlip, EqualsThePerPixelDefinition) {
  torch::manual_seed(3);
  for (const int64_t p : {0, 1, 4}) {
    for (const bool flip : {false, true}) {
      const CropFlipOptions opt{p, flip};
      const auto images = torch::randn({37, 3, 9, 7});
      const auto draws = sgdx::data::crop_flip_draws(37, opt, 11, 5);
      const auto out = sgdx::data::crop_flip(images, draws, opt);
      ASSERT_EQ(out.sizes(), images.sizes());
      EXPECT_EQ(out.dtype(), images.dtype());
      EXPECT_TRUE(torch::equal(out.to(torch::kDouble), reference(images, draws, p))) << "p " << p;
      if (!flip) EXPECT_EQ(draws.flip.sum().item<int64_t>(), 0);
      if (p == 0 && !flip) EXPECT_TRUE(torch::equal(out, images));
    }
  }
}

TEST(CropFlip, EveryOffsetAndBothFlipsMatchTheReference) {
  // Forced draws cover all (dy, dx, flip) for p = 4, independent of the generator.
  const CropFlipOptions opt;
  auto grid = torch::arange(9 * 9 * 2, torch::kLong);
  sgdx::data::CropFlipDraws d{torch::div(grid, 18, "floor"), torch::div(grid, 2, "floor") % 9, grid % 2};
  const auto images = torch::rand({162, 3, 32, 32}, torch::kDouble);
  EXPECT_TRUE(torch::equal(sgdx::data::crop_flip(images, d, opt), reference(images, d, 4)));
}

TEST(CropFlip, DrawsAreUniformAndIndependentOfTheShare) {
  const CropFlipOptions opt;
  const int64_t n = 90000;
  const auto d = sgdx::data::crop_flip_draws(n, opt, 7, 123);
  // Chi-square over the 9 offsets (8 degrees of freedom): 26.1 is the 0.999 quantile.
  for (const auto* t : {&d.dy, &d.dx}) {
    const auto counts = torch::bincount(*t, {}, 9).to(torch::kDouble);
    EXPECT_EQ(counts.sum().item<double>(), double(n));
    const double e = double(n) / 9;
    const double chi2 = ((counts - e).pow(2) / e).sum().item<double>();
    EXPECT_LT(chi2, 26.1);
  }
  // Flips: Binomial(n, 1/2); 5 standard deviations.
  const double flips = d.flip.sum().item<double>();
  EXPECT_LT(std::abs(flips - n / 2.0), 5 * std::sqrt(n / 4.0));
  // dy and dx are not the same draw: agreement is 1/9, not 1.
  const double same = d.dy.eq(d.dx).sum().item<double>() / double(n);
  EXPECT_NEAR(same, 1.0 / 9, 0.01);
  // A share of rows [k, k + m) draws what the whole batch draws there (N ranks = one process).
  const auto part = sgdx::data::crop_flip_draws(500, opt, 7, 123, 40000);
  EXPECT_TRUE(torch::equal(part.dy, d.dy.narrow(0, 40000, 500)));
  EXPECT_TRUE(torch::equal(part.dx, d.dx.narrow(0, 40000, 500)));
  EXPECT_TRUE(torch::equal(part.flip, d.flip.narrow(0, 40000, 500)));
}

TEST(CropFlip, SameSeedAndStepRepeatAnotherStepOrSeedDiffers) {
  torch::manual_seed(1);
  const auto images = torch::randn({256, 3, 32, 32});
  const auto a = sgdx::data::random_crop_flip(images, {}, 5, 10);
  EXPECT_TRUE(torch::equal(a, sgdx::data::random_crop_flip(images, {}, 5, 10)));
  EXPECT_FALSE(torch::equal(a, sgdx::data::random_crop_flip(images, {}, 5, 11)));
  EXPECT_FALSE(torch::equal(a, sgdx::data::random_crop_flip(images, {}, 6, 10)));
  // Steps past 2^32 are distinct counters, not a wrap-around.
  const auto lo = sgdx::data::crop_flip_draws(64, {}, 5, 3);
  const auto hi = sgdx::data::crop_flip_draws(64, {}, 5, 3 + (uint64_t{1} << 32));
  EXPECT_FALSE(torch::equal(lo.dy, hi.dy) && torch::equal(lo.dx, hi.dx));
}

TEST(CropFlip, BadInputIsRefusedByName) {
  const auto images = torch::zeros({4, 3, 8, 8});
  SGDX_EXPECT_THROW_MSG(sgdx::data::random_crop_flip(torch::zeros({4, 8, 8}), {}, 0, 0),
                        "images must be [N, C, H, W], got [4, 8, 8]");
  SGDX_EXPECT_THROW_MSG(sgdx::data::random_crop_flip(images, {-1, true}, 0, 0),
                        "padding must be in 0..1024, got -1");
  auto d = sgdx::data::crop_flip_draws(3, {}, 0, 0);
  SGDX_EXPECT_THROW_MSG(sgdx::data::crop_flip(images, d, {}), "4 images need 4 draws each, got [3]");
  d = sgdx::data::crop_flip_draws(4, {}, 0, 0);
  d.dx[0] = 9;
  SGDX_EXPECT_THROW_MSG(sgdx::data::crop_flip(images, d, {}), "crop offsets must be in 0..8");
  d.dx = d.dy.to(torch::kFloat);
  SGDX_EXPECT_THROW_MSG(sgdx::data::crop_flip(images, d, {}), "the draws must be int64, got Float");
}

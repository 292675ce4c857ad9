#include "sgdx/data/augment.h"

#include <ATen/ATen.h>

#include "sgdx/detail/philox.h"

namespace sgdx::data {

namespace {

constexpr uint32_t kAugmentStream = 0x6175676du;  // "augm": a stream of its own under any seed

void check_options(const CropFlipOptions& options) {
  TORCH_CHECK(options.padding >= 0 && options.padding <= 1024,
              "crop/flip augmentation: padding must be in 0..1024, got ", options.padding);
}

void check_images(const at::Tensor& images) {
  TORCH_CHECK(images.defined() && images.dim() == 4,
              "crop/flip augmentation: images must be [N, C, H, W], got ",
              images.defined() ? images.sizes() : c10::IntArrayRef{});
}

}  // namespace

CropFlipDraws crop_flip_draws(int64_t count, const CropFlipOptions& options, uint64_t seed, uint64_t step,
                              int64_t first_row) {
  check_options(options);
  TORCH_CHECK(count >= 0 && first_row >= 0, "crop/flip augmentation: rows [", first_row, ", ", first_row,
              " + ", count, ") are not a valid range");
  auto dy = at::empty({count}, at::kLong), dx = at::empty({count}, at::kLong),
       flip = at::empty({count}, at::kLong);
  auto* pdy = dy.data_ptr<int64_t>();
  auto* pdx = dx.data_ptr<int64_t>();
  auto* pf = flip.data_ptr<int64_t>();
  const auto span = static_cast<uint32_t>(2 * options.padding + 1);
  for (int64_t i = 0; i < count; ++i) {
    const auto row = static_cast<uint64_t>(first_row + i);
    const auto r =
        detail::philox4x32_10(static_cast<uint32_t>(row), static_cast<uint32_t>(row >> 32),
                              static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32) ^ kAugmentStream,
                              static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    pdy[i] = r.v[0] % span;
    pdx[i] = r.v[1] % span;
    pf[i] = options.flip ? (r.v[2] & 1u) : 0;
  }
  return {dy, dx, flip};
}

at::Tensor crop_flip(const at::Tensor& images, const CropFlipDraws& draws, const CropFlipOptions& options) {
  check_options(options);
  check_images(images);
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  for (const auto* t : {&draws.dy, &draws.dx, &draws.flip})
    TORCH_CHECK(t->defined() && t->dim() == 1 && t->size(0) == n, "crop/flip augmentation: ", n,
                " images need ", n, " draws each, got ", t->defined() ? t->sizes() : c10::IntArrayRef{});
  for (const auto* t : {&draws.dy, &draws.dx, &draws.flip})
    TORCH_CHECK(t->scalar_type() == at::kLong, "crop/flip augmentation: the draws must be int64, got ",
                t->scalar_type());
  const int64_t p = options.padding;
  if (n == 0) return images.clone();
  TORCH_CHECK(draws.dy.min().item<int64_t>() >= 0 && draws.dy.max().item<int64_t>() <= 2 * p &&
                  draws.dx.min().item<int64_t>() >= 0 && draws.dx.max().item<int64_t>() <= 2 * p,
              "crop/flip augmentation: crop offsets must be in 0..", 2 * p);
  const auto dev = images.device();
  const auto padded = at::constant_pad_nd(images, {p, p, p, p}, 0);  // [N, C, H + 2p, W + 2p]
  const auto ar_h = at::arange(h, at::TensorOptions(at::kLong).device(dev));
  const auto ar_w = at::arange(w, at::TensorOptions(at::kLong).device(dev));
  const auto rows = draws.dy.to(dev).unsqueeze(1) + ar_h;  // [N, H]
  const auto flipped = draws.flip.to(dev).unsqueeze(1).to(at::kBool);
  const auto cols = draws.dx.to(dev).unsqueeze(1) + at::where(flipped, (w - 1) - ar_w, ar_w);  // [N, W]
  const auto by_rows = padded.gather(2, rows.view({n, 1, h, 1}).expand({n, c, h, w + 2 * p}));
  return by_rows.gather(3, cols.view({n, 1, 1, w}).expand({n, c, h, w}));
}

at::Tensor random_crop_flip(const at::Tensor& images, const CropFlipOptions& options, uint64_t seed,
                            uint64_t step, int64_t first_row) {
  check_images(images);
  return crop_flip(images, crop_flip_draws(images.size(0), options, seed, step, first_row), options);
}

}  // namespace sgdx::data

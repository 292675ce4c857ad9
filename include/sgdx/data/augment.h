#pragma once
// Image augmentation for training on whole batches: the random crop with zero
// padding and horizontal flip of CIFAR training (He et al. 2016), drawn from a
// counter-based stream so that a row's augmentation is a pure function of
// (seed, step, row). A resumed run, a repeated run and N processes that each
// augment their share of a global batch therefore all see the same images.
#include <ATen/Tensor.h>

#include <cstdint>

#include "sgdx/export.h"

namespace sgdx::data {

struct CropFlipOptions {
  int64_t padding = 4;  ///< zeros added on each side before the crop; offsets are 0..2*padding
  bool flip = true;     ///< mirror half of the images left to right
};

/// The draws of rows [first_row, first_row + count) of batch `step`: crop offsets
/// dy, dx in 0..2*padding and flip in {0, 1} (int64 [count] each, on the CPU).
/// Row r's draws are Philox(counter = (r low, r high, step low, step high ^ "augm"),
/// key = seed): dy = v[0] mod (2p+1), dx = v[1] mod (2p+1), flip = v[2] & 1 (0 when
/// flips are off). The modulo bias is below 2^-28 for p <= 8.
struct CropFlipDraws {
  at::Tensor dy, dx, flip;
};
SGDX_API CropFlipDraws crop_flip_draws(int64_t count, const CropFlipOptions& options, uint64_t seed,
                                       uint64_t step, int64_t first_row = 0);

/// Image i of `images` [N, C, H, W] padded by options.padding zeros on each side,
/// cut to the H x W window at (dy[i], dx[i]) and mirrored left to right when flip[i]:
/// two gathers over the batch, on the images' device and in their dtype.
SGDX_API at::Tensor crop_flip(const at::Tensor& images, const CropFlipDraws& draws,
                              const CropFlipOptions& options);

/// crop_flip with the draws of rows [first_row, first_row + N) of batch `step`.
SGDX_API at::Tensor random_crop_flip(const at::Tensor& images, const CropFlipOptions& options, uint64_t seed,
                                     uint64_t step, int64_t first_row = 0);

}  // namespace sgdx::data

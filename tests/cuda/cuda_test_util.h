#pragma once
// Shared by the CUDA tests: the skip without a device, and the allocator poisoning
// that makes stale (unwritten) kernel outputs show.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>

#include "sgdx/config.h"

// A macro: GTEST_SKIP() only returns from the function it is written in.
#define SGDX_REQUIRE_CUDA()                                             \
  do {                                                                  \
    if (!SGDX_WITH_CUDA) GTEST_SKIP() << "sgdx built without CUDA";     \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

namespace sgdx::testing {
/// Fills 64 MiB of the CUDA caching allocator with NaN and frees it: the next
/// allocations (a kernel's outputs and workspaces) start as NaN.
inline void poison_cuda_cache() {
  auto p = torch::full({16 << 20}, NAN, torch::TensorOptions().device(torch::kCUDA));
  torch::cuda::synchronize();
}
}  // namespace sgdx::testing

#pragma once
// Small pieces shared by sgdx's kernels: a deterministic block reduction, the
// lookup of a block's descriptor in a sorted table, and the upload of a
// descriptor table through pinned memory.
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace sgdx::cuda {

/// Sum of one value per thread over a block of Threads threads (a multiple of 32),
/// in a fixed order (warp shuffles, then warps 0, 1, ...), so results repeat
/// bit for bit. `shared` holds Threads / 32 values. Valid in thread 0 only; every
/// thread of the block must call it. Safe to call back to back.
template <int Threads, typename T>
__device__ __forceinline__ T block_sum(T x, T* shared) {
  static_assert(Threads % 32 == 0, "block_sum: whole warps");
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  __syncthreads();  // a previous call may still be reading `shared`
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = x;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < Threads / 32; ++w) total += shared[w];
  }
  return total;
}

/// Index of the last descriptor whose `base` (first work item) is <= item, in a
/// table sorted by base (descriptors without work items share the next one's base
/// and are skipped).
template <typename Desc>
__device__ __forceinline__ int find_descriptor(const Desc* descs, int n, int64_t item, int64_t Desc::*base) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (descs[mid].*base <= item)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

/// Copies a host table of trivially copyable descriptors to `device` through
/// pinned memory, without blocking the host (the caching host allocator keeps the
/// pinned block until the copy is done). Keep the result alive until the kernels
/// that read it are queued.
template <typename Desc>
at::Tensor upload_descriptors(const std::vector<Desc>& descs, const at::Device& device) {
  const auto bytes = static_cast<int64_t>(descs.size() * sizeof(Desc));
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), descs.data(), static_cast<size_t>(bytes));
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace sgdx::cuda

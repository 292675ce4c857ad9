#pragma once
// Phases 0, A and B of the k-means kernel (cuda/kmeans.cu): the non-finite input
// checks, the per-feature variances behind the tolerance, and the initial
// centroids (given, or drawn by k-means++).
#include "kmeans_common.cuh"
#include "sgdx/detail/philox.h"

namespace sgdx::ops {
namespace {

// 0. Non-finite values: this block's first bad row (each thread stops at its
// first, the lowest of its elements) and whether its share of init has one.
__device__ void find_non_finite(const KArgs& a, int rb, int re, Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int bad = a.n, bad_init = 0;
  const int64_t e1 = static_cast<int64_t>(re) * a.d;
  for (int64_t e = static_cast<int64_t>(rb) * a.d + threadIdx.x; e < e1; e += kThreads) {
    if (!isfinite(a.x[e])) {
      bad = static_cast<int>(e / a.d);
      break;
    }
  }
  if (a.init != nullptr) {
    for (int e = blockIdx.x * kThreads + threadIdx.x; e < a.k * a.d; e += gridDim.x * kThreads) {
      bad_init |= !isfinite(a.init[e]);
    }
  }
  for (int off = 16; off > 0; off /= 2) {
    bad = min(bad, __shfl_xor_sync(0xffffffffu, bad, off));
    bad_init |= __shfl_xor_sync(0xffffffffu, bad_init, off);
  }
  if (lane == 0) {
    sh.ibad[warp] = bad;
    sh.iinit[warp] = bad_init;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      bad = min(bad, sh.ibad[w]);
      bad_init |= sh.iinit[w];
    }
    a.bad[blockIdx.x] = bad;
    a.bad[gridDim.x + blockIdx.x] = bad_init;
  }
}

// A. Per-feature variances (two passes in float64), for tol.
__device__ void feature_variances(const KArgs& a, Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int task = blockIdx.x; task < (a.d + 31) / 32; task += gridDim.x) {
    const int f = task * 32 + lane;
    double mean = 0.0;
    for (int pass = 0; pass < 2; ++pass) {
      double s = 0.0;
      if (f < a.d) {
        for (int i = warp; i < a.n; i += kWarps) {
          const double v = a.x[static_cast<int64_t>(i) * a.d + f];
          s += pass == 0 ? v : (v - mean) * (v - mean);
        }
      }
      __syncthreads();
      sh.red[warp][lane] = s;
      __syncthreads();
      double t = 0.0;
      for (int w = 0; w < kWarps; ++w) t += sh.red[w][lane];
      if (pass == 0)
        mean = t / a.n;
      else if (warp == 0 && f < a.d)
        a.fvar[f] = t / a.n;
    }
  }
}

// The k-means++ draw j (thread 0; every block takes the same decision from the
// same data): the block whose running sum of `part` passes u * total, then the
// row inside it.
__device__ int kmeanspp_pick(const KArgs& a, int j, const double* best, const double* part) {
  double total = 0.0;
  for (unsigned b = 0; b < gridDim.x; ++b) total += part[b];
  if (!(total > 0.0)) {
    return min(a.n - 1, static_cast<int>(sgdx::detail::kmeans_uniform(a.seed, a.stream, j) * a.n));
  }
  const double target = sgdx::detail::kmeans_uniform(a.seed, a.stream, j) * total;
  double cum = 0.0;
  int blk = -1;
  for (unsigned b = 0; b < gridDim.x; ++b) {
    if (cum + part[b] > target) {
      blk = static_cast<int>(b);
      break;
    }
    cum += part[b];
  }
  const int per = (a.n + gridDim.x - 1) / gridDim.x;
  int idx = a.n - 1;
  if (blk >= 0) {
    const int b0 = blk * per, b1 = min(a.n, b0 + per);
    idx = b1 - 1;  // rounding: the block's last row
    for (int i = b0; i < b1; ++i) {
      cum += best[i];
      if (cum > target) {
        idx = i;
        break;
      }
    }
  }
  while (idx > 0 && best[idx] == 0.0) --idx;  // as the CPU path: never a chosen row
  return idx;
}

// B. k-means++ into cur: per draw, each block updates the float64 distance to the
// nearest chosen row for its own rows and writes its block sum; after one grid
// sync every block picks the same row. best and bpart are double-buffered, so one
// sync per draw suffices.
__device__ void kmeans_plusplus(const KArgs& a, int rb, int re, float* cur, cg::grid_group& grid,
                                Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    const int first = min(a.n - 1, static_cast<int>(sgdx::detail::kmeans_uniform(a.seed, a.stream, 0) * a.n));
    sh.chosen[0] = first;
    sh.prev = first;
  }
  __syncthreads();
  for (int j = 1; j < a.k; ++j) {
    const int buf = j & 1;
    double* best = a.best + buf * a.n;
    const double* before = a.best + (buf ^ 1) * a.n;
    const float* y = a.x + static_cast<int64_t>(sh.prev) * a.d;
    for (int i = rb + warp; i < re; i += kWarps) {
      const double dist = row_dist(a.x, a.d, i, y);
      if (lane == 0) best[i] = j == 1 ? dist : fmin(before[i], dist);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double s = 0.0;
      for (int i = rb; i < re; ++i) s += best[i];
      a.bpart[buf * gridDim.x + blockIdx.x] = s;
    }
    grid.sync();
    if (threadIdx.x == 0) {
      const int idx = kmeanspp_pick(a, j, best, a.bpart + buf * gridDim.x);
      sh.chosen[j] = idx;
      sh.prev = idx;
    }
    __syncthreads();
  }
  for (int e = blockIdx.x * kThreads + threadIdx.x; e < a.k * a.d; e += gridDim.x * kThreads) {
    cur[e] = a.x[static_cast<int64_t>(sh.chosen[e / a.d]) * a.d + e % a.d];
  }
}

// B. The initial centroids into cur: init, or k-means++.
__device__ void initial_centroids(const KArgs& a, int rb, int re, float* cur, cg::grid_group& grid,
                                  Shared& sh) {
  if (a.init != nullptr) {
    for (int e = blockIdx.x * kThreads + threadIdx.x; e < a.k * a.d; e += gridDim.x * kThreads)
      cur[e] = a.init[e];
  } else {
    kmeans_plusplus(a, rb, re, cur, grid, sh);
  }
}

}  // namespace
}  // namespace sgdx::ops

#pragma once
// Phase C of the k-means kernel (cuda/kmeans.cu): Lloyd iterations. Assignment
// (32-row tiles x all centroids through shared memory, ||c||^2 - 2 x.c, lowest
// index on ties) | sync | per (cluster, 128 features) task the sum of its rows
// found by warp ballots, the new centroid and its shift partial | sync | [empty
// clusters: distances to own centroid | sync | block 0 re-seeds at the farthest
// points | sync] | every block sums the shift partials in the same order and
// takes the same decision.
#include "kmeans_common.cuh"

namespace sgdx::ops {
namespace {

// Nearest centroid of every row (assign[i]), through 32-row tiles.
// c: the current centroids (rewritten across grid syncs: no __restrict__).
__device__ void assign_rows(const KArgs& a, const float* c, Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int j = warp; j < a.k; j += kWarps) {
    float s = 0.f;
    for (int f = lane; f < a.d; f += 32) s += c[j * a.d + f] * c[j * a.d + f];
    s = warp_sum(s);
    if (lane == 0) sh.cn[j] = s;
  }
  const int r = threadIdx.x / 8, cj = threadIdx.x % 8;
  const int tiles = (a.n + kRows - 1) / kRows;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int row0 = tile * kRows;
    float acc[kMaxK / 8];
#pragma unroll
    for (int m = 0; m < kMaxK / 8; ++m) acc[m] = 0.f;
    for (int f0 = 0; f0 < a.d; f0 += kFeat) {
      __syncthreads();
      for (int e = threadIdx.x; e < kRows * kFeat; e += kThreads) {
        const int rr = e / kFeat, ff = e % kFeat;
        sh.sx[rr][ff] =
            (row0 + rr < a.n && f0 + ff < a.d) ? a.x[static_cast<int64_t>(row0 + rr) * a.d + f0 + ff] : 0.f;
      }
      for (int e = threadIdx.x; e < a.k * kFeat; e += kThreads) {
        const int jj = e / kFeat, ff = e % kFeat;
        sh.sc[jj][ff] = f0 + ff < a.d ? c[jj * a.d + f0 + ff] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int ff = 0; ff < kFeat; ++ff) {
        const float xv = sh.sx[r][ff];
#pragma unroll
        for (int m = 0; m < kMaxK / 8; ++m) acc[m] += xv * sh.sc[(cj + 8 * m) % kMaxK][ff];
      }
    }
    // Lowest index on ties: ascending j within the thread, then (value, index) across the 8 threads.
    float best = INFINITY;
    int arg = a.k;
#pragma unroll
    for (int m = 0; m < kMaxK / 8; ++m) {
      const int j = cj + 8 * m;
      if (j < a.k) {
        const float v = sh.cn[j] - 2.f * acc[m];
        if (v < best || arg == a.k) best = v, arg = j;
      }
    }
    for (int off = 1; off < 8; off *= 2) {
      const float ov = __shfl_xor_sync(0xffffffffu, best, off);
      const int oa = __shfl_xor_sync(0xffffffffu, arg, off);
      if (ov < best || (ov == best && oa < arg)) best = ov, arg = oa;
    }
    if (cj == 0 && row0 + r < a.n) a.assign[row0 + r] = arg;
  }
  __syncthreads();
}

// Per (cluster, 128 features) task: the sum of its rows, the new centroid, the shift partial.
// c and next swap roles every iteration (no __restrict__: see the top of the file).
__device__ void update_centroids(const KArgs& a, const float* c, float* next, Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = (a.d + kUpdFeat - 1) / kUpdFeat;
  const int groups = (a.n + 31) / 32;
  for (int task = blockIdx.x; task < a.k * chunks; task += gridDim.x) {
    const int j = task / chunks, f0 = (task % chunks) * kUpdFeat;
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    int count = 0;
    for (int gi = warp; gi < groups; gi += kWarps) {
      const int i = gi * 32 + lane;
      const bool mine = i < a.n && a.assign[i] == j;
      unsigned mask = __ballot_sync(0xffffffffu, mine);
      count += __popc(mask);
      while (mask) {
        const int row = gi * 32 + __ffs(mask) - 1;
        mask &= mask - 1;
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int f = f0 + lane + 32 * m;
          if (f < a.d) s[m] += a.x[static_cast<int64_t>(row) * a.d + f];
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int m = 0; m < 4; ++m) sh.wsum[warp][lane + 32 * m] = s[m];
    if (lane == 0) sh.wcount[warp] = count;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < kWarps; ++w) total += sh.wcount[w];
    double shift = 0.0;
    if (threadIdx.x < kUpdFeat && f0 + static_cast<int>(threadIdx.x) < a.d) {
      float sum = 0.f;
      for (int w = 0; w < kWarps; ++w) sum += sh.wsum[w][threadIdx.x];
      const int f = f0 + threadIdx.x;
      const float v = total > 0 ? sum / static_cast<float>(total) : 0.f;
      next[j * a.d + f] = v;
      const double delta = static_cast<double>(v) - static_cast<double>(c[j * a.d + f]);
      shift = delta * delta;
    }
    const double task_shift =
        sgdx::cuda::block_sum<kThreads>(shift, sh.bsum);  // threads 0..127 hold the values
    if (threadIdx.x == 0) {
      a.tpart[task] = task_shift;
      if (f0 == 0) a.counts[j] = total;
    }
  }
}

// Block 0: the row farthest from its own centroid (argmax of far, lowest index on
// ties), in sh.prev for every thread; its far is set to -1 so it is not taken twice.
__device__ int farthest_row(const KArgs& a, Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float bv = -INFINITY;
  int bi = a.n;
  for (int i = threadIdx.x; i < a.n; i += kThreads) {
    const float v = a.far[i];
    if (v > bv) bv = v, bi = i;
  }
  for (int off = 16; off > 0; off /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
    if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
  }
  __syncthreads();
  if (lane == 0) {
    sh.red[warp][0] = bv;
    sh.wcount[warp] = bi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = static_cast<float>(sh.red[0][0]);
    int i = sh.wcount[0];
    for (int w = 1; w < kWarps; ++w) {
      const float ov = static_cast<float>(sh.red[w][0]);
      if (ov > v || (ov == v && sh.wcount[w] < i)) v = ov, i = sh.wcount[w];
    }
    sh.prev = i;
    a.far[i] = -1.f;
  }
  __syncthreads();
  return sh.prev;
}

// Block 0: every empty cluster e re-seeded at the farthest remaining row, and the
// shift partials of its tasks recomputed.
__device__ void reseed_empty(const KArgs& a, const float* cur, float* nxt, Shared& sh) {
  const int chunks = (a.d + kUpdFeat - 1) / kUpdFeat;
  for (int e = 0; e < a.k; ++e) {
    if (a.counts[e] != 0) continue;  // block-uniform
    const int i = farthest_row(a, sh);
    for (int f = threadIdx.x; f < a.d; f += kThreads)
      nxt[e * a.d + f] = a.x[static_cast<int64_t>(i) * a.d + f];
    __syncthreads();
    for (int ch = 0; ch < chunks; ++ch) {
      double s = 0.0;
      const int f = ch * kUpdFeat + threadIdx.x;
      if (threadIdx.x < kUpdFeat && f < a.d) {
        const double dv = static_cast<double>(nxt[e * a.d + f]) - static_cast<double>(cur[e * a.d + f]);
        s = dv * dv;
      }
      const double t = sgdx::cuda::block_sum<kThreads>(s, sh.bsum);
      if (threadIdx.x == 0) a.tpart[e * chunks + ch] = t;
    }
    __syncthreads();
  }
}

// C. Lloyd iterations from cur (nxt: the other buffer); on return cur holds the
// last centroids. Returns the iterations run.
__device__ int lloyd(const KArgs& a, int rb, int re, float*& cur, float*& nxt, cg::grid_group& grid,
                     Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = (a.d + kUpdFeat - 1) / kUpdFeat;
  int iterations = 0;
  for (int it = 0; it < a.max_iters; ++it) {
    assign_rows(a, cur, sh);
    grid.sync();
    update_centroids(a, cur, nxt, sh);
    grid.sync();
    if (threadIdx.x == 0) {
      int empty = 0;
      for (int j = 0; j < a.k; ++j) empty += a.counts[j] == 0;
      sh.flag = empty;
    }
    __syncthreads();
    if (sh.flag > 0) {
      // Distance of every row to its own (previous) centroid.
      for (int i = rb + warp; i < re; i += kWarps) {
        const float dist = row_dist(a.x, a.d, i, cur + static_cast<int64_t>(a.assign[i]) * a.d);
        if (lane == 0) a.far[i] = dist;
      }
      grid.sync();
      if (blockIdx.x == 0) reseed_empty(a, cur, nxt, sh);
      grid.sync();
    }
    if (threadIdx.x == 0) {
      double shift = 0.0;
      for (int t = 0; t < a.k * chunks; ++t) shift += a.tpart[t];
      sh.stop = shift <= sh.tol_abs;
    }
    __syncthreads();
    float* tmp = cur;
    cur = nxt;
    nxt = tmp;
    iterations = it + 1;
    const bool stop = sh.stop != 0;
    __syncthreads();  // every thread has read sh.stop (and sh.flag) before thread 0 rewrites them
    if (stop) break;  // block-uniform, and the same in every block
  }
  return iterations;
}

}  // namespace
}  // namespace sgdx::ops

// k-means in one cooperative launch (sgdx/ops/kmeans.h: kmeans_cuda). Every
// block runs the same program; grid-wide syncs separate the phases:
//   0  per block, the first row with a non-finite feature and whether the initial
//      centroids have one (read after the sync that ends B; then every block
//      stops and stats carry the error: the host checks nothing, so it need not sync)
//   A  per-feature variances (float64, two passes) for the tolerance
//   B  k-means++: per draw, each block updates the float64 distance to the
//      nearest chosen row for its own contiguous rows and writes its block sum;
//      after one sync every block finds the same draw (the block whose running
//      sum passes u * total, then the row inside it), double-buffered so one
//      sync per draw suffices
//   C  Lloyd: assignment (32-row tiles x all centroids through shared memory,
//      ||c||^2 - 2 x.c, lowest index on ties) | sync | per (cluster, 128
//      features) task the sum of its rows found by warp ballots, the new
//      centroid and its shift partial | sync | [empty clusters: distances to own
//      centroid | sync | block 0 re-seeds at the farthest points | sync] | every
//      block sums the shift partials in the same order and takes the same decision
//   D  final assignment, counts, inertia, outputs.
// All sums have a fixed order, so the result is deterministic.
//
// No pointer that the kernel writes is __restrict__ (or read through the
// read-only cache): the centroids, assignments, distances and partials are
// rewritten by other blocks between grid syncs, and a non-coherent load could
// return a value from before the sync. Only x and init, read-only for the whole
// launch, may be.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "kernel_util.cuh"
#include "sgdx/detail/philox.h"
#include "sgdx/ops/kmeans.h"

namespace sgdx::ops {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 32;  // rows per assignment tile
constexpr int kFeat = 64;  // features per shared-memory chunk of the assignment
constexpr int kMaxK = 64;
constexpr int kUpdFeat = 128;  // features per update task (4 per lane)

struct KArgs {
  const float* x;
  const float* init;  // nullptr: k-means++
  int n, d, k, max_iters;
  double tol;
  unsigned long long seed, stream;
  // workspace
  float* c0;      // [k, d]
  float* c1;      // [k, d]
  int* assign;    // [n]
  double* best;   // [2, n]
  double* bpart;  // [2, grid]
  double* fvar;   // [d]
  double* tpart;  // [k * ceil(d / 128)]
  float* far;     // [n]
  int* counts;    // [k]
  int* bad;       // [2, grid]: per block, first row with a non-finite value (n: none) | non-finite init
  // outputs
  float* centroids;       // [k, d]
  long long* assignment;  // [n]
  long long* out_counts;  // [k], zeroed
  double* stats;          // [4]: iterations, inertia, bad row (-1: none), bad init (KMeansCudaStat)
};

struct Shared {
  float sx[kRows][kFeat + 1];
  float sc[kMaxK][kFeat + 1];
  float cn[kMaxK];
  float wsum[kWarps][kUpdFeat];
  int wcount[kWarps];
  double red[kWarps][32];
  double bsum[kWarps];
  int chosen[kMaxK];
  int ibad[kWarps];
  int iinit[kWarps];
  int bad_row;   // -1: every feature is finite
  int bad_init;  // the initial centroids have a non-finite value
  double tol_abs;
  int flag;  // empty clusters this iteration
  int stop;  // the tolerance test passed
  int prev;
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Rows [begin, end) owned by this block in the contiguous partition.
__device__ __forceinline__ void my_rows(int n, int& begin, int& end) {
  const int per = (n + gridDim.x - 1) / gridDim.x;
  begin = min(n, static_cast<int>(blockIdx.x) * per);
  end = min(n, begin + per);
}

// ||x_i - y||^2 in float for row i, one warp; valid in every lane. x is the
// features (read-only for the whole launch); y may be a centroid, rewritten
// between grid syncs, so it is an ordinary pointer.
__device__ __forceinline__ float row_dist(const float* __restrict__ x, int d, int i, const float* y) {
  float s = 0.f;
  for (int f = threadIdx.x % 32; f < d; f += 32) {
    const float v = x[static_cast<int64_t>(i) * d + f] - y[f];
    s += v * v;
  }
  return warp_sum(s);
}

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

__global__ void __launch_bounds__(kThreads) kmeans_kernel(KArgs a) {
  cg::grid_group grid = cg::this_grid();
  __shared__ Shared sh;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = (a.d + kUpdFeat - 1) / kUpdFeat;
  int rb, re;
  my_rows(a.n, rb, re);

  // 0. Non-finite values: this block's first bad row (each thread stops at its
  // first, the lowest of its elements) and whether its share of init has one.
  {
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
  if (a.tol > 0) {
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

  // B. Initial centroids.
  float* cur = a.c0;
  float* nxt = a.c1;
  if (a.init != nullptr) {
    for (int e = blockIdx.x * kThreads + threadIdx.x; e < a.k * a.d; e += gridDim.x * kThreads)
      cur[e] = a.init[e];
  } else {
    if (threadIdx.x == 0) {
      const int first =
          min(a.n - 1, static_cast<int>(sgdx::detail::kmeans_uniform(a.seed, a.stream, 0) * a.n));
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
        // Every block takes the same decision from the same data.
        const double* part = a.bpart + buf * gridDim.x;
        double total = 0.0;
        for (unsigned b = 0; b < gridDim.x; ++b) total += part[b];
        int idx;
        if (!(total > 0.0)) {
          idx = min(a.n - 1, static_cast<int>(sgdx::detail::kmeans_uniform(a.seed, a.stream, j) * a.n));
        } else {
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
          idx = a.n - 1;
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
        }
        sh.chosen[j] = idx;
        sh.prev = idx;
      }
      __syncthreads();
    }
    for (int e = blockIdx.x * kThreads + threadIdx.x; e < a.k * a.d; e += gridDim.x * kThreads) {
      cur[e] = a.x[static_cast<int64_t>(sh.chosen[e / a.d]) * a.d + e % a.d];
    }
  }
  grid.sync();
  if (threadIdx.x == 0) {
    double v = 0.0;
    if (a.tol > 0) {
      for (int f = 0; f < a.d; ++f) v += a.fvar[f];
      v = a.tol * (v / a.d);
    }
    sh.tol_abs = v;
    int row = a.n, init_bad = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) {
      row = min(row, a.bad[b]);
      init_bad |= a.bad[gridDim.x + b];
    }
    sh.bad_row = row < a.n ? row : -1;
    sh.bad_init = init_bad;
  }
  __syncthreads();
  if (sh.bad_row >= 0 || sh.bad_init != 0) {
    // Every block reads the same flags and leaves here: no grid sync follows.
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      a.stats[0] = 0.0;
      a.stats[1] = NAN;
      a.stats[2] = sh.bad_row;
      a.stats[3] = sh.bad_init;
    }
    return;
  }

  // C. Lloyd iterations.
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
      if (blockIdx.x == 0) {
        for (int e = 0; e < a.k; ++e) {
          if (a.counts[e] != 0) continue;  // block-uniform
          // argmax of far, lowest index on ties.
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
          const int i = sh.prev;
          for (int f = threadIdx.x; f < a.d; f += kThreads)
            nxt[e * a.d + f] = a.x[static_cast<int64_t>(i) * a.d + f];
          __syncthreads();
          // The shift partials of this cluster's tasks, recomputed.
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

  // D. Final assignment, counts, inertia, outputs.
  assign_rows(a, cur, sh);
  grid.sync();
  for (int i = rb + warp; i < re; i += kWarps) {
    const int j = a.assign[i];
    const float dist = row_dist(a.x, a.d, i, cur + static_cast<int64_t>(j) * a.d);
    if (lane == 0) {
      a.far[i] = dist;
      a.assignment[i] = j;
      atomicAdd(reinterpret_cast<unsigned long long*>(a.out_counts + j), 1ull);  // integers: order-free
    }
  }
  for (int e = blockIdx.x * kThreads + threadIdx.x; e < a.k * a.d; e += gridDim.x * kThreads)
    a.centroids[e] = cur[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int i = rb; i < re; ++i) s += a.far[i];
    a.bpart[blockIdx.x] = s;
  }
  grid.sync();
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double s = 0.0;
    for (unsigned b = 0; b < gridDim.x; ++b) s += a.bpart[b];
    a.stats[0] = iterations;
    a.stats[1] = s;
    a.stats[2] = -1.0;
    a.stats[3] = 0.0;
  }
}

}  // namespace

namespace detail {

namespace {
std::atomic<int> grid_for_testing{0};
}  // namespace

int set_kmeans_cuda_grid_for_testing(int blocks) {
  return grid_for_testing.exchange(std::max(blocks, 0));
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> kmeans_cuda_try_launch(
    const at::Tensor& x_in, int64_t k, const KMeansOptions& options) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  if (!prop->cooperativeLaunch) {
    TORCH_WARN_ONCE("kmeans_cuda: device ", prop->name,
                    " does not support cooperative launches; the ATen k-means runs instead");
    return std::nullopt;
  }
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kmeans_kernel, kThreads, 0));
  if (per_sm < 1) {
    TORCH_WARN_ONCE("kmeans_cuda: the kernel does not fit on an SM of device ", prop->name,
                    "; the ATen k-means runs instead");
    return std::nullopt;
  }
  // Contiguous, possibly at an odd element offset: the kernel loads scalars only.
  const auto x = x_in.contiguous();
  const int n = static_cast<int>(x.size(0)), d = static_cast<int>(x.size(1));
  const int chunks = (d + kUpdFeat - 1) / kUpdFeat;
  const int work = std::max({(n + kRows - 1) / kRows, static_cast<int>(k) * chunks, 1});
  // Every block must be resident at once for the grid syncs: at most per_sm per SM.
  const int forced = grid_for_testing.load();
  const int grid = forced > 0 ? forced : std::min(per_sm * prop->multiProcessorCount, work);

  const auto fopt = x.options();
  const auto dopt = fopt.dtype(at::kDouble);
  const auto iopt = fopt.dtype(at::kInt);
  const auto lopt = fopt.dtype(at::kLong);
  auto c0 = at::empty({k, d}, fopt), c1 = at::empty({k, d}, fopt);
  auto assign = at::empty({n}, iopt);
  auto best = at::empty({2, n}, dopt);
  auto bpart = at::empty({2, grid}, dopt);
  auto fvar = at::empty({d}, dopt);
  auto tpart = at::empty({k * chunks}, dopt);
  auto far = at::empty({n}, fopt);
  auto counts_ws = at::empty({k}, iopt);
  auto bad = at::empty({2, grid}, iopt);
  auto centroids = at::empty({k, d}, fopt);
  auto assignment = at::empty({n}, lopt);
  auto counts = at::zeros({k}, lopt);
  auto stats = at::empty({kStatCount}, dopt);
  // kmeans_cuda / kmeans_cuda_launch have put init on the device (pinned, non-blocking):
  // then this is a no-op. A host init from elsewhere costs a blocking copy.
  at::Tensor init;
  if (options.init.defined()) init = options.init.to(x.device(), at::kFloat).contiguous();

  KArgs args{};
  args.x = x.data_ptr<float>();
  args.init = init.defined() ? init.data_ptr<float>() : nullptr;
  args.n = n;
  args.d = d;
  args.k = static_cast<int>(k);
  args.max_iters = static_cast<int>(options.max_iters);
  args.tol = options.tol;
  args.seed = options.seed;
  args.stream = options.stream;
  args.c0 = c0.data_ptr<float>();
  args.c1 = c1.data_ptr<float>();
  args.assign = assign.data_ptr<int>();
  args.best = best.data_ptr<double>();
  args.bpart = bpart.data_ptr<double>();
  args.fvar = fvar.data_ptr<double>();
  args.tpart = tpart.data_ptr<double>();
  args.far = far.data_ptr<float>();
  args.counts = counts_ws.data_ptr<int>();
  args.bad = bad.data_ptr<int>();
  args.centroids = centroids.data_ptr<float>();
  args.assignment = reinterpret_cast<long long*>(assignment.data_ptr<int64_t>());
  args.out_counts = reinterpret_cast<long long*>(counts.data_ptr<int64_t>());
  args.stats = stats.data_ptr<double>();
  void* params[] = {&args};
  const cudaError_t err =
      cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&kmeans_kernel), dim3(grid), dim3(kThreads),
                                  params, 0, at::cuda::getCurrentCUDAStream());
  if (err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported) {
    // Not a sticky error, but it stays the "last error" that the next launch
    // check (C10_CUDA_KERNEL_LAUNCH_CHECK) would report: clear it.
    (void)cudaGetLastError();
    TORCH_WARN_ONCE("kmeans_cuda: the cooperative launch of ", grid, " blocks does not fit on device ",
                    prop->name, " now (", cudaGetErrorString(err), "); the ATen k-means runs instead");
    return std::nullopt;
  }
  C10_CUDA_CHECK(err);
  return std::make_tuple(centroids, assignment, counts, stats);
}
}  // namespace detail

}  // namespace sgdx::ops

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
// Phases 0-B are in kmeans_init.cuh, C in kmeans_lloyd.cuh, the shared types in
// kmeans_common.cuh; this file holds the kernel, phase D and the host launcher.
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

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "kmeans_common.cuh"
#include "kmeans_init.cuh"
#include "kmeans_lloyd.cuh"
#include "sgdx/ops/kmeans.h"

namespace sgdx::ops {
namespace {

// After the sync that ends B: the tolerance from the variances, and the non-finite
// checks of every block, in shared memory.
__device__ void gather_checks(const KArgs& a, Shared& sh) {
  if (threadIdx.x != 0) return;
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

// D. Final assignment, counts, inertia, outputs.
__device__ void write_outputs(const KArgs& a, int rb, int re, const float* cur, int iterations,
                              cg::grid_group& grid, Shared& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
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

__global__ void __launch_bounds__(kThreads) kmeans_kernel(KArgs a) {
  cg::grid_group grid = cg::this_grid();
  __shared__ Shared sh;
  int rb, re;
  my_rows(a.n, rb, re);
  find_non_finite(a, rb, re, sh);
  if (a.tol > 0) feature_variances(a, sh);
  float* cur = a.c0;
  float* nxt = a.c1;
  initial_centroids(a, rb, re, cur, grid, sh);
  grid.sync();
  gather_checks(a, sh);
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
  const int iterations = lloyd(a, rb, re, cur, nxt, grid, sh);
  write_outputs(a, rb, re, cur, iterations, grid, sh);
}

// The kernel's workspace and outputs for x [n, d] (float32, contiguous, on the
// device), and its arguments pointing into them.
struct Buffers {
  at::Tensor c0, c1, assign, best, bpart, fvar, tpart, far, counts_ws, bad;  // workspace
  at::Tensor centroids, assignment, counts, stats;                           // outputs
  KArgs args{};
};

Buffers make_buffers(const at::Tensor& x, const at::Tensor& init, int64_t k, int grid,
                     const KMeansOptions& options) {
  const int n = static_cast<int>(x.size(0)), d = static_cast<int>(x.size(1));
  const int chunks = (d + kUpdFeat - 1) / kUpdFeat;
  const auto fopt = x.options();
  const auto dopt = fopt.dtype(at::kDouble);
  const auto iopt = fopt.dtype(at::kInt);
  const auto lopt = fopt.dtype(at::kLong);
  Buffers b;
  b.c0 = at::empty({k, d}, fopt), b.c1 = at::empty({k, d}, fopt);
  b.assign = at::empty({n}, iopt);
  b.best = at::empty({2, n}, dopt);
  b.bpart = at::empty({2, grid}, dopt);
  b.fvar = at::empty({d}, dopt);
  b.tpart = at::empty({k * chunks}, dopt);
  b.far = at::empty({n}, fopt);
  b.counts_ws = at::empty({k}, iopt);
  b.bad = at::empty({2, grid}, iopt);
  b.centroids = at::empty({k, d}, fopt);
  b.assignment = at::empty({n}, lopt);
  b.counts = at::zeros({k}, lopt);
  b.stats = at::empty({detail::kStatCount}, dopt);

  KArgs& args = b.args;
  args.x = x.data_ptr<float>();
  args.init = init.defined() ? init.data_ptr<float>() : nullptr;
  args.n = n;
  args.d = d;
  args.k = static_cast<int>(k);
  args.max_iters = static_cast<int>(options.max_iters);
  args.tol = options.tol;
  args.seed = options.seed;
  args.stream = options.stream;
  args.c0 = b.c0.data_ptr<float>();
  args.c1 = b.c1.data_ptr<float>();
  args.assign = b.assign.data_ptr<int>();
  args.best = b.best.data_ptr<double>();
  args.bpart = b.bpart.data_ptr<double>();
  args.fvar = b.fvar.data_ptr<double>();
  args.tpart = b.tpart.data_ptr<double>();
  args.far = b.far.data_ptr<float>();
  args.counts = b.counts_ws.data_ptr<int>();
  args.bad = b.bad.data_ptr<int>();
  args.centroids = b.centroids.data_ptr<float>();
  args.assignment = reinterpret_cast<long long*>(b.assignment.data_ptr<int64_t>());
  args.out_counts = reinterpret_cast<long long*>(b.counts.data_ptr<int64_t>());
  args.stats = b.stats.data_ptr<double>();
  return b;
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

  // kmeans_cuda / kmeans_cuda_launch have put init on the device (pinned, non-blocking):
  // then this is a no-op. A host init from elsewhere costs a blocking copy.
  at::Tensor init;
  if (options.init.defined()) init = options.init.to(x.device(), at::kFloat).contiguous();
  Buffers b = make_buffers(x, init, k, grid, options);
  void* params[] = {&b.args};
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
  return std::make_tuple(b.centroids, b.assignment, b.counts, b.stats);
}
}  // namespace detail

}  // namespace sgdx::ops

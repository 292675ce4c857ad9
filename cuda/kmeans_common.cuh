#pragma once
// The pieces every phase of the k-means kernel shares (cuda/kmeans.cu): its sizes,
// its arguments and workspace, its shared memory, and the row helpers. Included
// by cuda/kmeans.cu alone (with kmeans_init.cuh and kmeans_lloyd.cuh): one
// translation unit, since a cooperative kernel's device code links in one piece.
#include <cooperative_groups.h>

#include <cstdint>

#include "kernel_util.cuh"

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

}  // namespace
}  // namespace sgdx::ops

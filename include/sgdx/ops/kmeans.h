#pragma once
// k-means for per-sample feature vectors (the clustered GradQueue step and
// anything else that needs it): seeded k-means++ initialisation from a
// counter-based stream, Lloyd iterations with a tolerance, empty clusters
// re-seeded at the point farthest from its centroid, ties to the lowest index.
// CPU implementation from ATen ops; it runs on any device ATen supports.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "sgdx/export.h"

namespace sgdx::ops {

/// Which implementation kmeans() runs.
enum class KMeansBackend {
  /// fused_cuda for the inputs it takes once a GPU run has verified it
  /// (sgdx/ops/cuda_kernels.h), aten otherwise.
  automatic,
  /// ATen ops on the features' device (any dtype, any size).
  aten,
  /// kmeans_cuda(): one cooperative CUDA launch (CUDA float32, n <= 4096, k <= 64,
  /// d <= 1024); anything else is an error naming the limit. Where the device
  /// cannot run the cooperative launch, the ATen path runs instead.
  fused_cuda,
};

struct KMeansOptions {
  /// Lloyd iterations at most (0: only initialise and assign).
  int64_t max_iters = 10;
  /// Stop when the total squared centroid shift is <= tol * mean per-feature
  /// variance of the data (scikit-learn's rule). 0: run all iterations unless
  /// the centroids stop moving.
  double tol = 1e-4;
  /// k-means++ draws come from Philox4x32-10 keyed by `seed`, counter (stream, draw):
  /// the same (seed, stream) gives the same clusters on every run and device.
  uint64_t seed = 0;
  uint64_t stream = 0;
  /// Optional initial centroids [k, d] (then no draws are made).
  at::Tensor init;
  KMeansBackend backend = KMeansBackend::automatic;
  /// Fused path only: leave the one host read to the caller (who folds it into a read of
  /// its own): the result then carries `stats` and iterations/inertia stay unset until
  /// detail::finish_kmeans_result is called with the host copy.
  bool defer_host_read = false;
};

struct KMeansResult {
  at::Tensor centroids;    ///< [k, d], the dtype of x
  at::Tensor assignment;   ///< [n] int64, the nearest final centroid (lowest index on ties)
  at::Tensor counts;       ///< [k] int64 cluster sizes of `assignment`
  int64_t iterations = 0;  ///< Lloyd updates performed
  double inertia = 0.0;    ///< sum of squared distances to the assigned centroids
  /// The implementation that produced the result: fused_cuda, or aten (also when
  /// fused_cuda was asked for but the device could not run its cooperative launch).
  KMeansBackend backend = KMeansBackend::aten;
  /// With KMeansOptions::defer_host_read on the fused path: float64 [4] on the device
  /// (detail::KMeansCudaStat); undefined otherwise.
  at::Tensor stats;
};

/// Clusters the rows of x [n, d] (floating point, finite, k >= 1, n >= k unless n = 0).
/// Empty input (n = 0 or d = 0) runs nothing and returns, on x's device:
/// assignment zeros [n] (every point ties at distance 0), counts [k] = {n, 0, ...},
/// centroids [k, d] in x's dtype (the given init, else NaN when n = 0: there is
/// no point to place them at), iterations 0, inertia 0.
SGDX_API KMeansResult kmeans(const at::Tensor& x, int64_t k, const KMeansOptions& options = {});

/// The backend kmeans() runs for these inputs: `backend` unless automatic.
SGDX_API KMeansBackend resolve_kmeans_backend(const at::Tensor& x, int64_t k, KMeansBackend backend);

/// Limits of the single-launch CUDA k-means.
constexpr int64_t kKMeansCudaMaxRows = 4096, kKMeansCudaMaxClusters = 64, kKMeansCudaMaxFeatures = 1024;

/// k-means in one cooperative CUDA launch: the feature variances (for tol), the
/// k-means++ draws (or the given init), every Lloyd iteration with the same
/// tolerance test and empty-cluster rule, the final assignment, counts and
/// inertia. The same algorithm, Philox stream and tie rules as the ATen path, so
/// on the same seed the clusters are the same up to float rounding (a point
/// equidistant to two centroids within rounding may go either way). For CUDA
/// float32 x [n, d] with n <= 4096, k <= 64, d <= 1024. Deterministic.
///
/// The grid is what the device holds co-resident (occupancy x SMs, capped by the
/// work). Where the cooperative launch cannot run (no cooperative launch, the grid
/// does not fit, e.g. under MPS or beside other work), the ATen path runs instead
/// (result.backend says which ran; a warning once per process). The finiteness
/// checks run in the kernel, so the only host sync is one read of [iterations,
/// inertia, error flags] after the launch (docs/cuda.md, "Host syncs"); an initial
/// centroid on the host is uploaded through pinned memory without blocking.
SGDX_API KMeansResult kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options = {});

namespace detail {
/// Validation of kmeans_cuda's arguments that needs no device work (CPU-testable):
/// device, dtype, layout, shape, the kernel's limits, max_iters, tol, the init's
/// shape. Finiteness of x and init is checked by the kernel (no host sync).
SGDX_API void check_kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options);

/// stats of kmeans_cuda_launch: float64 [4] on the device.
enum KMeansCudaStat : int64_t {
  kStatIterations = 0,
  kStatInertia = 1,
  kStatBadRow = 2,   ///< first row of x with a non-finite value, -1 if none (then nothing else is valid)
  kStatBadInit = 3,  ///< 1 if the initial centroids have a non-finite value, else 0
  kStatCount = 4,
};

/// Checks the host copy of a deferred result's stats (non-finite input: an error naming
/// the row) and fills iterations and inertia.
SGDX_API void finish_kmeans_result(KMeansResult& result, const double* host_stats);

/// The launch alone, without the host reads of kmeans_cuda (for benchmarks and
/// for callers that keep the results on the device): {centroids, assignment,
/// counts, stats}, see KMeansCudaStat. No host sync. Arguments must have passed
/// check_kmeans_cuda. Where the cooperative launch cannot run, runs the ATen path
/// (which syncs) and fills the same outputs.
SGDX_API std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_cuda_launch(
    const at::Tensor& x, int64_t k, const KMeansOptions& options);

/// The cooperative launch, or nothing when the device cannot run it (no
/// cooperative launch support, no co-resident block, or
/// cudaErrorCooperativeLaunchTooLarge, which is cleared). Throws on any other error.
SGDX_API std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> kmeans_cuda_try_launch(
    const at::Tensor& x, int64_t k, const KMeansOptions& options);

/// Test hook: launch kmeans_cuda with `blocks` blocks (0: the co-resident count,
/// the default). A count above what is co-resident makes the launch fail with
/// cudaErrorCooperativeLaunchTooLarge, which exercises the ATen fallback.
/// Returns the previous value.
SGDX_API int set_kmeans_cuda_grid_for_testing(int blocks);
}  // namespace detail

/// k-means++ seeding: indices [k] (int64) of the rows chosen as initial centroids.
/// The first is uniform, each next one has probability proportional to its
/// squared distance to the nearest chosen row (uniform when all are 0).
SGDX_API at::Tensor kmeans_plusplus(const at::Tensor& x, int64_t k, uint64_t seed, uint64_t stream);

/// Index of the nearest centroid for every row of x, [n] int64 (lowest index on ties).
SGDX_API at::Tensor nearest_centroid(const at::Tensor& x, const at::Tensor& centroids);

/// The uniform double in [0, 1) that draw `draw` of (seed, stream) uses.
SGDX_API double kmeans_uniform(uint64_t seed, uint64_t stream, uint64_t draw);

}  // namespace sgdx::ops

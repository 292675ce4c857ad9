#pragma once
// k-means for per-sample feature vectors (the clustered GradQueue step and
// anything else that needs it): seeded k-means++ initialisation from a
// counter-based stream, Lloyd iterations with a tolerance, empty clusters
// re-seeded at the point farthest from its centroid, ties to the lowest index.
// CPU implementation from ATen ops; it runs on any device ATen supports.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace sgdx::ops {

/// Which implementation kmeans() runs.
enum class KMeansBackend {
  /// ATen ops on the features' device (any dtype, any size).
  aten,
  /// kmeans_cuda(): one cooperative CUDA launch (CUDA float32, n <= 4096, k <= 64,
  /// d <= 1024); anything else is an error naming the limit.
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
  KMeansBackend backend = KMeansBackend::aten;
};

struct KMeansResult {
  at::Tensor centroids;   ///< [k, d], the dtype of x
  at::Tensor assignment;  ///< [n] int64, the nearest final centroid (lowest index on ties)
  at::Tensor counts;      ///< [k] int64 cluster sizes of `assignment`
  int64_t iterations = 0; ///< Lloyd updates performed
  double inertia = 0.0;   ///< sum of squared distances to the assigned centroids
};

/// Clusters the rows of x [n, d] (floating point, finite, n >= k >= 1).
KMeansResult kmeans(const at::Tensor& x, int64_t k, const KMeansOptions& options = {});

/// Limits of the single-launch CUDA k-means.
constexpr int64_t kKMeansCudaMaxRows = 4096, kKMeansCudaMaxClusters = 64, kKMeansCudaMaxFeatures = 1024;

/// k-means in one cooperative CUDA launch: the feature variances (for tol), the
/// k-means++ draws (or the given init), every Lloyd iteration with the same
/// tolerance test and empty-cluster rule, the final assignment, counts and
/// inertia. The same algorithm, Philox stream and tie rules as the ATen path, so
/// on the same seed the clusters are the same up to float rounding (a point
/// equidistant to two centroids within rounding may go either way). For CUDA
/// float32 x [n, d] with n <= 4096, k <= 64, d <= 1024. Deterministic.
KMeansResult kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options = {});

namespace detail {
/// Validation of kmeans_cuda's arguments (CPU-testable).
void check_kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options);
/// The launch alone, without the host reads of kmeans_cuda (for benchmarks):
/// returns {centroids, assignment, counts, stats} with stats = float64 [iterations, inertia]
/// on the device. Arguments must have passed check_kmeans_cuda.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_cuda_launch(const at::Tensor& x, int64_t k,
                                                                             const KMeansOptions& options);
}  // namespace detail

/// k-means++ seeding: indices [k] (int64) of the rows chosen as initial centroids.
/// The first is uniform, each next one has probability proportional to its
/// squared distance to the nearest chosen row (uniform when all are 0).
at::Tensor kmeans_plusplus(const at::Tensor& x, int64_t k, uint64_t seed, uint64_t stream);

/// Index of the nearest centroid for every row of x, [n] int64 (lowest index on ties).
at::Tensor nearest_centroid(const at::Tensor& x, const at::Tensor& centroids);

/// The uniform double in [0, 1) that draw `draw` of (seed, stream) uses.
double kmeans_uniform(uint64_t seed, uint64_t stream, uint64_t draw);

}  // namespace sgdx::ops

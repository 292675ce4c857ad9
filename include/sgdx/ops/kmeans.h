#pragma once
// k-means for per-sample feature vectors (the clustered GradQueue step and
// anything else that needs it): seeded k-means++ initialisation from a
// counter-based stream, Lloyd iterations with a tolerance, empty clusters
// re-seeded at the point farthest from its centroid, ties to the lowest index.
// CPU implementation from ATen ops; it runs on any device ATen supports.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace sgdx::ops {

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

/// k-means++ seeding: indices [k] (int64) of the rows chosen as initial centroids.
/// The first is uniform, each next one has probability proportional to its
/// squared distance to the nearest chosen row (uniform when all are 0).
at::Tensor kmeans_plusplus(const at::Tensor& x, int64_t k, uint64_t seed, uint64_t stream);

/// Index of the nearest centroid for every row of x, [n] int64 (lowest index on ties).
at::Tensor nearest_centroid(const at::Tensor& x, const at::Tensor& centroids);

/// The uniform double in [0, 1) that draw `draw` of (seed, stream) uses.
double kmeans_uniform(uint64_t seed, uint64_t stream, uint64_t draw);

}  // namespace sgdx::ops

#pragma once
// The stages of GradQueueSGDM::clustered_step (docs/gradqueue.md, "The clustered
// variant"), each a function of tensors so that each can be tested on its own:
//   1. cluster_batch       k-means on the features: assignment and |C_k|
//   2. cluster_gradient_sums, cluster_means
//                          G_k = (sum of the cluster's gradients) / |C_k| + wd * theta
//   3. cluster_scarcity    Delta-rho_k = clip((||G_k - mu|| / (sqrt(sum sigma^2) + eps))^kappa,
//                          rho_min, rho_max), per tensor or from whole-model sums
//   4. combine_clusters    G* = sum_k |C_k|/B Delta-rho_k G_k and the plain mean sum_k |C_k|/B G_k
// The optimizer keeps the windows and takes the momentum step (sgdx/optim/gradqueue.h).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "sgdx/export.h"
#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/optim/gradqueue.h"

namespace sgdx::ops {
class PerSampleGradients;
}

namespace sgdx::optim::detail {

struct ClusterSettings {
  int64_t clusters = 1;
  int64_t kmeans_iters = 10;
  double kmeans_tol = 1e-4;
  uint64_t seed = 0;
  uint64_t stream = 0;  ///< the k-means call counter (Philox stream)
  bool fused_cuda = false;
};

struct ClusterAssignment {
  at::Tensor assignment;       ///< [B] cluster of each sample, on the losses' device
  at::Tensor counts;           ///< [K] float64 |C_k|, on the losses' device
  std::vector<int64_t> sizes;  ///< |C_k| on the host
  double mean_loss = 0.0;      ///< the batch-mean loss (host)
  int64_t iterations = 0;      ///< Lloyd iterations
};

/// Stage 1: clusters the batch on `features` [B, d]; one device read brings the batch-mean
/// loss, |C_k| and the fused k-means' numbers to the host.
SGDX_API ClusterAssignment cluster_batch(const at::Tensor& losses, const at::Tensor& features,
                                         const ClusterSettings& settings);

/// Stage 2a: per parameter, [K, *shape] sums over each cluster of the per-sample
/// gradients of `losses` (one backward with `capture`, else one autograd pass per cluster).
SGDX_API std::vector<at::Tensor> cluster_gradient_sums(const at::Tensor& losses,
                                                       const std::vector<at::Tensor>& params,
                                                       const ClusterAssignment& clusters,
                                                       ops::PerSampleGradients* capture);
/// Stage 2b: [K, numel] means G_k = sums_k * inv_size_k + weight_decay * param, in the
/// parameter's dtype. inv_size: [K] float64 1 / max(|C_k|, 1) (empty clusters stay 0).
SGDX_API at::Tensor cluster_means(const at::Tensor& sums, const at::Tensor& inv_size, const at::Tensor& param,
                                  double weight_decay);

/// The clip of Delta-rho (from a group's options).
struct ScarcityRule {
  double eps = 1e-8, kappa = 1.0, rho_min = 0.5, rho_max = 2.0;
};
SGDX_API ScarcityRule scarcity_rule(const GradQueueSGDMOptions& o);

/// One tensor of stage 3. In the warm-up (`warm_up`) its Delta-rho is 1 and `stats` is unused.
struct ScarcityTensor {
  ops::GradQueueClusterTensor stats;  ///< the sums, param, window mean/M2, 1/n, weight decay
  ScarcityRule rule;
  bool warm_up = false;
};

/// Stage 3: per tensor, Delta-rho_k [K] (float64). scope global: one Delta-rho_k from the
/// deviations and variances summed over the tensors with `global_rule`, 1 while any tensor
/// is in its warm-up. fused_cuda: the statistics of CUDA tensors in one
/// gradqueue_cluster_stats_cuda launch; every backend computes them in float64.
SGDX_API std::vector<at::Tensor> cluster_scarcity(const std::vector<ScarcityTensor>& tensors,
                                                  const at::Tensor& inv_size, GradQueueScope scope,
                                                  const ScarcityRule& global_rule, bool fused_cuda);

struct ClusterDirection {
  at::Tensor g_star;  ///< sum_k w_k Delta-rho_k G_k, the step direction
  at::Tensor g_mean;  ///< sum_k w_k G_k, the plain batch mean (+ weight decay) that enters the window
};
/// Stage 4: `means` [K, numel] from cluster_means, `weights` [K] float64 |C_k| / B,
/// `rho` [K] from cluster_scarcity; results in the shape and dtype of `param`.
SGDX_API ClusterDirection combine_clusters(const at::Tensor& means, const at::Tensor& weights,
                                           const at::Tensor& rho, const at::Tensor& param);

}  // namespace sgdx::optim::detail

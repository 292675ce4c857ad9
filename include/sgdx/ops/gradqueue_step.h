#pragma once
// The fused GradQueue-SGDM update of one parameter tensor (see
// sgdx/optim/gradqueue.h for the rule). One pass over p, g, v, S1, S2 and the
// queue rows (two passes for tensor granularity: a reduction, then the update):
// 44 bytes per float32 parameter against SGD-momentum's 20.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::ops {

struct GradQueueStepConfig {
  double lr = 0.0, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
  double rho_min = 1.0, rho_max = 1.0, kappa = 1.0, eps = 1e-8;
  bool per_element = true;  ///< false: one Delta-rho for the whole tensor
};

/// One tensor's operands. All tensors contiguous, same dtype/device/numel.
struct GradQueueTensor {
  at::Tensor param, grad;
  at::Tensor momentum;  ///< the momentum buffer (read unless first_step; unused when momentum == 0)
  /// Window statistics (sgdx/detail/gradqueue_math.h): s1 the mean (gradqueue_mean_dtype);
  /// s2 the sum of squared deviations (exact storage) or the running variance (ema), and the
  /// queue rows, in gradqueue_stats_dtype.
  at::Tensor s1, s2;
  at::Tensor slot;    ///< exact storage: the queue row that receives d; undefined for ema
  at::Tensor old;     ///< exact storage: the row leaving the window (may alias slot); undefined if none
  int64_t count = 0;  ///< exact storage: entries in the window before the push (>= 1 when `old` is given)
  /// Delta-rho from the window statistics (needs an entry in the window); false in the
  /// warm-up, where Delta-rho = 1.
  bool scarcity = false;
  double ema_rate = 0.0;    ///< ema storage: the running moments' rate in (0, 1]; 0 selects exact storage
  bool first_step = false;  ///< the momentum buffer starts as the update (as in torch::optim::SGD)
  /// Optional: the step direction in place of Delta-rho * d (the clustered step's G*); d is
  /// still what enters the window. Taken by the ATen path (CPU tensors are routed there).
  at::Tensor direction;
};

/// The dtype of the window statistics (s2, the ema mean) and queue rows for parameters
/// of `param_dtype`: float32 for half/bfloat16, else the parameters' own.
SGDX_API at::ScalarType gradqueue_stats_dtype(at::ScalarType param_dtype);
/// The dtype of the window mean s1: float64 for exact storage, else gradqueue_stats_dtype.
SGDX_API at::ScalarType gradqueue_mean_dtype(at::ScalarType param_dtype, bool exact_storage);

/// Applies one step in place and returns the sum of Delta-rho over the
/// tensor's elements (numel * Delta-rho for tensor granularity) as a float64
/// scalar tensor on the parameter's device (no host read). float32/float64
/// CPU tensors take the fused kernel; every other device or dtype (CUDA, half,
/// bfloat16) the ATen composition below (same rule, opmath in float32 or wider).
SGDX_API at::Tensor gradqueue_step_(GradQueueTensor& t, const GradQueueStepConfig& config);

/// The same step from ATen ops, for any device and floating dtype (the verified
/// default on CUDA, and the reference the fused kernels are tested against).
SGDX_API at::Tensor gradqueue_step_aten_(GradQueueTensor& t, const GradQueueStepConfig& config);

/// The fused multi-tensor CUDA kernel: every tensor on one CUDA device, one
/// floating dtype (float32, float64, float16, bfloat16; opmath float32 or wider).
/// `grad_scale` (optional float32 scalar on the device) divides the gradients;
/// a nonzero `found_inf` (optional float32 scalar) makes the step write nothing
/// (parameters, momentum, sums, queue rows). The caller's ring bookkeeping
/// (head, count) is host state: an optimizer that uses found_inf must read it
/// before advancing its counters. Returns the per-tensor sums of Delta-rho as a
/// float64 device tensor [T] (no host synchronisation). Throws when sgdx was
/// built without CUDA.
SGDX_API at::Tensor gradqueue_step_cuda_(std::vector<GradQueueTensor>& tensors,
                                         const GradQueueStepConfig& config, const at::Tensor& grad_scale = {},
                                         const at::Tensor& found_inf = {});

/// One tensor of the clustered step's statistics (GradQueueSGDM::clustered_step).
struct GradQueueClusterTensor {
  at::Tensor sums;     ///< [K, *shape]: the per-cluster gradient sums
  at::Tensor param;    ///< read only when weight_decay != 0
  at::Tensor s1, s2;   ///< the window statistics (mean; M2 or variance), param's shape
  double inv_n = 1.0;  ///< the variance is s2 * inv_n: 1/n of the window (exact storage); 1 for ema
  double weight_decay = 0.0;
};

/// The per-cluster scarcity statistics of the clustered step, for every tensor t
/// and cluster k: dev[t][k] = ||sums_t[k] * inv_size[k] + wd * p - mu||^2 with
/// mu = s1, and var[t] = sum max(s2 * inv_n, 0); returned as
/// float64 [T, K + 1] (the K deviations, then var). The scarcity of cluster k is
/// sqrt(dev) / (sqrt(var) + eps) (per tensor, or with dev and var summed over the
/// tensors for the global scope). inv_size: [K] float64, 1/|C_k| (0 for empty
/// clusters is allowed). The ATen version computes in float64 on any device.
SGDX_API at::Tensor gradqueue_cluster_stats_aten(const std::vector<GradQueueClusterTensor>& tensors,
                                                 const at::Tensor& inv_size);
/// The fused CUDA version: one launch reads every tensor once (the K rows of its
/// sums, p, S1, S2; opmath float64), a second sums the per-chunk partials in a
/// fixed order. All tensors on one CUDA device, one floating dtype; result on the
/// device (no host synchronisation).
SGDX_API at::Tensor gradqueue_cluster_stats_cuda(const std::vector<GradQueueClusterTensor>& tensors,
                                                 const at::Tensor& inv_size);

namespace detail {
SGDX_API void check_cluster_stats(const std::vector<GradQueueClusterTensor>& tensors,
                                  const at::Tensor& inv_size, bool cuda);
/// Validation of a tensor list for the multi-tensor paths (device, dtype, layout,
/// sizes, grad_scale/found_inf), with messages that name the tensor and the value.
SGDX_API void check_gradqueue_list(const std::vector<GradQueueTensor>& tensors,
                                   const GradQueueStepConfig& config, const at::Tensor& grad_scale,
                                   const at::Tensor& found_inf, bool cuda);
}  // namespace detail

/// z-score reference constant: E|N(0,1)| = sqrt(2/pi).
inline constexpr double kGradQueueZRef = 0.79788456080286535588;

}  // namespace sgdx::ops

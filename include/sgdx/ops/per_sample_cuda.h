#pragma once
// The fused per-sample squared-norm kernel (CUDA): one launch computes, for
// every captured Linear / Conv2d layer and every sample, the squared norm of the
// sample's weight and bias gradient from the layer input and output gradient,
// with the same rules as the ATen path of PerSampleGradients:
//   Linear, one position per sample   ||a_i||^2 ||d_i||^2 (+ ||d_i||^2 for the bias)
//   Linear over T positions / Conv2d  ghost rule  sum_{t,s} <a_t,a_s><d_t,d_s>   (cost T^2 (K + P))
//                                     or the per-sample gradient D_i^T A_i formed
//                                     tile by tile and squared                 (cost T K P)
//                                     (automatic: ghost when 2 T^2 <= K P, as on the CPU)
//   bias                              ||sum_t d_t||^2
// Conv2d inputs are unfolded inside the kernel (implicit im2col, zero padding,
// stride, dilation, groups). Inputs in float32, float16 or bfloat16 (a and d of
// one dtype, any element offset: loads are scalar); products and 32-long runs of
// each dot product in float32, every longer sum (Gram and gradient entries across
// runs, the rule's sum over entries, partials) in float64; the result is float32
// [layers, B] of squared norms of the *captured* gradients (PerSampleGradients
// multiplies by its loss-reduction scale), within ~1e-6 relative of float64 on the
// same operands. Deterministic: every tile writes a partial and the last tile of a
// (layer, sample) sums them in a fixed order. No host sync: the descriptor table
// goes up through pinned memory without blocking.
//
// PerSampleGradients uses it when PerSampleOptions::backend is fused (see
// per_sample.h); it is public for programs that capture layers themselves.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "sgdx/export.h"
#include "sgdx/ops/per_sample.h"

namespace sgdx::ops {

struct NormLayerOperands {
  enum class Kind { linear, conv2d };
  Kind kind = Kind::linear;
  /// linear: the layer input, [B*T, K] or [B, T, K] (undefined when weight = false);
  /// conv2d: the layer input [B, Cin, H, W].
  at::Tensor input;
  /// linear: the output gradient [B*T, P] or [B, T, P]; conv2d: [B, Cout, Ho, Wo].
  at::Tensor grad_output;
  bool weight = true;  ///< include the weight's gradient
  bool bias = false;   ///< include the bias's gradient
  NormStrategy strategy = NormStrategy::automatic;
  // conv2d geometry (as torch::nn::Conv2d): kernel, stride, padding, dilation, groups.
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1,
          dilation_w = 1, groups = 1;
};

/// Squared per-sample gradient norms of every layer, float32 [layers.size(), batch].
/// All operands on one CUDA device; throws c10::Error naming the layer and the
/// problem for anything else (and always in a build without CUDA). batch = 0, no
/// layers, or layers without work (no positions, inputs or outputs) give zeros on
/// the operands' device (the current CUDA device when there is no layer).
SGDX_API at::Tensor per_sample_sq_norms_cuda(const std::vector<NormLayerOperands>& layers, int64_t batch);

namespace detail {
/// How a layer's squared norm is computed, on the CPU and in the kernel alike
/// (the kernel's descriptor table carries it to the device).
enum class NormRule : int {
  outer_product,  ///< Linear with one position per sample: ||a_i||^2 ||d_i||^2
  ghost,          ///< Gram matrices of inputs and output gradients, sum_{t,s} <a_t,a_s><d_t,d_s>
  materialize,    ///< the per-sample weight gradient D_i^T A_i, formed and squared
  bias_only,      ///< no weight: ||sum_t d_t||^2 only
};
/// The rule for a weight over T positions per sample, K inputs and P outputs
/// per group: outer_product for a Linear layer with T = 1, else as `strategy`
/// says (automatic: ghost when 2 T^2 <= K P, the cheaper of the two).
SGDX_API NormRule weight_norm_rule(NormLayerOperands::Kind kind, int64_t T, int64_t K, int64_t P,
                                   NormStrategy strategy);
/// Shape/device/dtype validation of per_sample_sq_norms_cuda (CPU-testable).
/// `cuda` = also require CUDA tensors.
SGDX_API void check_norm_layers(const std::vector<NormLayerOperands>& layers, int64_t batch, bool cuda);
/// The rule the kernel applies to a layer (bias_only when its weight is left out).
SGDX_API NormRule norm_rule(const NormLayerOperands& layer, int64_t batch);
}  // namespace detail

}  // namespace sgdx::ops

#pragma once
// The affine part of a normalisation layer, y = gamma (.) xhat + beta, with xhat
// fixed per sample (LayerNorm, GroupNorm, BatchNorm in eval mode): per-sample
// gradients dgamma_i = sum d (.) xhat and dbeta_i = sum d, formed directly (they
// have as many entries as channels).
#include "captured_layer.h"

namespace sgdx::ops {

class AffineNormLayer : public CapturedLayer {
 public:
  /// Which dims of the output the parameters index.
  enum class ParamDims {
    channel,   // dim 1 (GroupNorm, BatchNorm)
    trailing,  // the last ones (LayerNorm)
  };
  at::Tensor xhat;  // normalised input, same shape as the output
  std::vector<int64_t> param_shape;
  ParamDims param_dims = ParamDims::trailing;

  at::Tensor sq_norms(NormStrategy strategy) const override;
  std::vector<at::Tensor> grads(const at::Tensor& idx) const override;
  at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const override;

 private:
  // Sums a [B, ...] tensor over everything but the batch and parameter dims: [B, *param_shape].
  at::Tensor reduce(const at::Tensor& t) const;
  std::vector<at::Tensor> all() const;
};

}  // namespace sgdx::ops

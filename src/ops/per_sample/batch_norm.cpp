// BatchNorm in eval mode (running statistics) is the per-channel affine map
// y = gamma * xhat + beta with xhat = (x - running_mean) / sqrt(running_var + eps)
// fixed per sample, so its per-sample gradients are those of GroupNorm's affine
// part (affine_norm.h). In training mode (or without running statistics) xhat uses
// the batch's statistics, which couple the samples: refused.
#include <torch/csrc/autograd/generated/Functions.h>

#include "affine_norm.h"
#include "registry.h"

namespace sgdx::ops {
namespace {

namespace gen = torch::autograd::generated;

// N: the batch-norm backward node of one backend (native, cuDNN, MIOpen).
template <class N>
std::unique_ptr<CapturedLayer> batch_norm_eval(const N& n, double eps, const LayerSite& site) {
  TORCH_CHECK(
      !n.training, "per-sample gradients are not defined for BatchNorm layer '", site.label,
      "': in training mode (or with track_running_stats=false) it normalises with the statistics of the "
      "batch, which couple its samples (call eval() on it, use GroupNorm or LayerNorm, or ignore its "
      "parameters with PerSampleOptions::ignore)");
  auto x = n.input_.unpack();
  auto mean = n.running_mean_.unpack(), var = n.running_var_.unpack();
  TORCH_CHECK(x.defined() && mean.defined() && var.defined(),
              "per-sample gradients: the input or running statistics "
              "of BatchNorm layer '",
              site.label, "' were not saved by autograd");
  TORCH_CHECK(x.dim() >= 2 && x.size(0) == site.batch, "per-sample gradients: BatchNorm layer '", site.label,
              "' needs batch-first [B, C, ...] input with batch size ", site.batch, ", got ", x.sizes());
  std::vector<int64_t> channel(x.dim(), 1);
  channel[1] = x.size(1);
  auto l = std::make_unique<AffineNormLayer>();
  l->xhat = (x - mean.reshape(channel)) * (var.reshape(channel) + eps).rsqrt();
  l->param_shape = {x.size(1)};
  l->param_dims = AffineNormLayer::ParamDims::channel;
  return l;
}

}  // namespace

void register_batch_norm_rules(LayerRegistry& registry) {
  const std::string layer = "BatchNorm in eval mode";
  registry.add<gen::NativeBatchNormBackward0>(
      layer,
      [](gen::NativeBatchNormBackward0& n, const LayerSite& s) { return batch_norm_eval(n, n.eps, s); });
  registry.add<gen::CudnnBatchNormBackward0>(layer, [](gen::CudnnBatchNormBackward0& n, const LayerSite& s) {
    return batch_norm_eval(n, n.epsilon, s);
  });
  registry.add<gen::MiopenBatchNormBackward0>(
      layer,
      [](gen::MiopenBatchNormBackward0& n, const LayerSite& s) { return batch_norm_eval(n, n.epsilon, s); });
}

}  // namespace sgdx::ops

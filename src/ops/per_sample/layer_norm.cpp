// LayerNorm's affine parameters (affine_norm.h), read from NativeLayerNormBackward0.
#include <torch/csrc/autograd/generated/Functions.h>

#include "affine_norm.h"
#include "registry.h"

namespace sgdx::ops {
namespace {

namespace gen = torch::autograd::generated;

std::unique_ptr<CapturedLayer> layer_norm_layer(gen::NativeLayerNormBackward0& n, const LayerSite& site) {
  auto l = std::make_unique<AffineNormLayer>();
  auto x = n.input_.unpack();
  auto mean = n.result1_.unpack(site.node);
  auto rstd = n.result2_.unpack(site.node);
  l->xhat = (x - mean) * rstd;
  l->param_shape = as_ints(n.normalized_shape);
  TORCH_CHECK(x.size(0) == site.batch, "per-sample gradients: LayerNorm layer '", site.label,
              "' needs batch-first input with batch size ", site.batch, ", got ", x.sizes());
  return l;
}

}  // namespace

void register_layer_norm_rules(LayerRegistry& registry) {
  registry.add<gen::NativeLayerNormBackward0>("LayerNorm", layer_norm_layer);
}

}  // namespace sgdx::ops

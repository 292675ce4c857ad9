// GroupNorm's affine parameters (affine_norm.h), read from NativeGroupNormBackward0.
#include <torch/csrc/autograd/generated/Functions.h>

#include "affine_norm.h"
#include "registry.h"

namespace sgdx::ops {
namespace {

namespace gen = torch::autograd::generated;

std::unique_ptr<CapturedLayer> group_norm_layer(gen::NativeGroupNormBackward0& n, const LayerSite& site) {
  auto l = std::make_unique<AffineNormLayer>();
  auto x = n.input_.unpack();
  const int64_t N = as_int(n.N), G = n.group;
  auto mean = n.result1_.unpack(site.node).reshape({N, G, 1});
  auto rstd = n.result2_.unpack(site.node).reshape({N, G, 1});
  l->xhat = ((x.reshape({N, G, -1}) - mean) * rstd).reshape(x.sizes());
  l->param_shape = {x.size(1)};
  l->param_dims = AffineNormLayer::ParamDims::channel;
  TORCH_CHECK(N == site.batch, "per-sample gradients: GroupNorm layer '", site.label, "' saw batch ", N,
              ", expected ", site.batch);
  return l;
}

}  // namespace

void register_group_norm_rules(LayerRegistry& registry) {
  registry.add<gen::NativeGroupNormBackward0>("GroupNorm", group_norm_layer);
}

}  // namespace sgdx::ops

#include "affine_norm.h"

namespace sgdx::ops {

at::Tensor AffineNormLayer::reduce(const at::Tensor& t) const {
  if (param_dims == ParamDims::channel) return t.reshape({batch, t.size(1), -1}).sum(2);
  std::vector<int64_t> shape = {batch};
  shape.insert(shape.end(), param_shape.begin(), param_shape.end());
  return t.reshape({batch, -1, c10::multiply_integers(param_shape)}).sum(1).reshape(shape);
}

std::vector<at::Tensor> AffineNormLayer::all() const {
  std::vector<at::Tensor> out;
  if (has_weight()) out.push_back(reduce(slot->d * xhat));
  if (has_bias()) out.push_back(reduce(slot->d));
  return out;
}

at::Tensor AffineNormLayer::sq_norms(NormStrategy /*strategy*/) const {
  auto total = at::zeros({batch}, slot->d.options());
  for (auto& g : all()) total += per_row_sum(g.pow(2));
  return total;
}

std::vector<at::Tensor> AffineNormLayer::grads(const at::Tensor& idx) const {
  auto out = all();
  for (auto& g : out) g = g.index_select(0, idx);
  return out;
}

at::Tensor AffineNormLayer::dot(const at::Tensor& w, const at::Tensor& b) const {
  auto total = at::zeros({batch}, slot->d.options());
  auto g = all();
  size_t k = 0;
  if (has_weight()) {
    if (w.defined()) total += per_row_sum(g[k] * w);
    ++k;
  }
  if (has_bias() && b.defined()) total += per_row_sum(g[k] * b);
  return total;
}

}  // namespace sgdx::ops

// Embedding: ||dE_i||^2 = sum_{t,t'} [idx_t = idx_t'] <d_t, d_t'>. Read from EmbeddingBackward0.
#include <c10/util/irange.h>
#include <torch/csrc/autograd/generated/Functions.h>

#include "registry.h"

namespace sgdx::ops {
namespace {

namespace gen = torch::autograd::generated;

// Indices [B, T] (as saved), D [B, T, dim]; padding_idx rows get no gradient.
class EmbeddingLayer : public CapturedLayer {
 public:
  at::Tensor indices;
  int64_t padding_idx = -1, num_embeddings = 0;

  at::Tensor idx() const { return indices.reshape({batch, -1}); }
  at::Tensor D() const {
    auto d = slot->d.reshape({batch, -1, slot->d.size(-1)});
    if (padding_idx >= 0) d = d * idx().ne(padding_idx).unsqueeze(-1).to(d.scalar_type());
    return d;
  }
  // [B1, B2, T, T'] mask of equal indices between the samples of two sets.
  static at::Tensor same(const at::Tensor& i1, const at::Tensor& i2) {
    return i1.unsqueeze(1).unsqueeze(3).eq(i2.unsqueeze(0).unsqueeze(2));
  }

  at::Tensor sq_norms(NormStrategy) const override {
    auto d = D();
    auto i = idx();
    auto eq = i.unsqueeze(2).eq(i.unsqueeze(1)).to(d.scalar_type());  // [B, T, T]
    return (d.bmm(d.transpose(1, 2)) * eq).sum({1, 2});
  }
  std::vector<at::Tensor> grads(const at::Tensor& sel) const override {
    auto d = D().index_select(0, sel);
    auto i = idx().index_select(0, sel);
    auto g = at::zeros({sel.size(0), num_embeddings, d.size(2)}, d.options());
    for (const auto s : c10::irange(sel.size(0))) g[s].index_add_(0, i[s], d[s]);
    return {g};
  }
  at::Tensor gram(const at::Tensor& sel) const override {
    auto d = D().index_select(0, sel);
    auto i = idx().index_select(0, sel);
    auto dd = at::einsum("itk,jsk->ijts", {d, d});
    return (dd * same(i, i).to(d.scalar_type())).sum({2, 3});
  }
  at::Tensor dot(const at::Tensor& w, const at::Tensor&) const override {
    auto d = D();
    if (!w.defined()) return at::zeros({batch}, d.options());
    return (d * w.index_select(0, idx().reshape(-1)).reshape(d.sizes())).sum({1, 2});
  }
};

std::unique_ptr<CapturedLayer> embedding_layer(gen::EmbeddingBackward0& n, const LayerSite& site) {
  TORCH_CHECK(!n.scale_grad_by_freq, "per-sample gradients: Embedding layer '", site.label,
              "' uses scale_grad_by_freq, which couples the samples of a batch");
  auto l = std::make_unique<EmbeddingLayer>();
  l->indices = n.indices_.unpack();
  l->padding_idx = as_int(n.padding_idx);
  l->num_embeddings = as_int(n.weight_sym_argsize_0);
  TORCH_CHECK(l->indices.dim() >= 1 && l->indices.size(0) == site.batch,
              "per-sample gradients: Embedding layer '", site.label,
              "' needs batch-first indices with batch size ", site.batch, ", got ", l->indices.sizes());
  return l;
}

}  // namespace

void register_embedding_rules(LayerRegistry& registry) {
  registry.add<gen::EmbeddingBackward0>("Embedding", embedding_layer);
}

}  // namespace sgdx::ops

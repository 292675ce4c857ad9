// Linear: y_t = W a_t + b over T positions per sample.
//   ||dW_i||^2 = <A_i A_i^T, D_i D_i^T>_F (ghost) or ||D_i^T A_i||^2,  ||db_i||^2 = ||sum_t D_i[t]||^2
// Read from AddmmBackward0 / MmBackward0 (the weight's matmul) or, when only the
// bias is included and it is added after the matmul, from AddBackward0.
#include <c10/util/irange.h>
#include <torch/csrc/autograd/generated/Functions.h>

#include "graph.h"
#include "registry.h"

namespace sgdx::ops {
namespace {

namespace gen = torch::autograd::generated;

// A [B*T, d] (the layer input as its backward node saved it), D [B*T, p].
class LinearLayer : public CapturedLayer {
 public:
  at::Tensor a;                      // undefined when the weight is left out
  bool check_output_layout = false;  // bias only: the batch layout is read from the captured gradient

  void check_captured() const override {
    if (!check_output_layout) return;
    const auto& d = slot->d;
    const auto layout = d.dim() >= 2 ? batch_layout(d.sizes(), batch) : BatchLayout::not_first;
    TORCH_CHECK(layout == BatchLayout::first, "per-sample gradients: Linear layer '", name,
                "' (bias only) has output of shape ", d.sizes(),
                ", whose batch dimension cannot be established as "
                "its first for batch size ",
                batch, "; give the layer a batch-first [B, ..., F] input");
  }
  at::Tensor D() const { return slot->d.reshape({batch, -1, slot->d.size(-1)}); }  // [B, T, p]
  at::Tensor A() const { return a.reshape({batch, -1, a.size(-1)}); }              // [B, T, d]

  at::Tensor sq_norms(NormStrategy strategy) const override {
    auto d = D();
    auto total = at::zeros({batch}, d.options());
    if (has_weight()) {
      auto x = A();
      switch (detail::weight_norm_rule(NormLayerOperands::Kind::linear, d.size(1), x.size(2), d.size(2),
                                       strategy)) {
        case detail::NormRule::outer_product:
          total += x.squeeze(1).pow(2).sum(1) * d.squeeze(1).pow(2).sum(1);
          break;
        case detail::NormRule::ghost:
          total += (x.bmm(x.transpose(1, 2)) * d.bmm(d.transpose(1, 2))).sum({1, 2});
          break;
        default:
          total += d.transpose(1, 2).bmm(x).pow(2).sum({1, 2});
      }
    }
    if (has_bias()) total += d.sum(1).pow(2).sum(1);
    return total;
  }

  std::vector<at::Tensor> grads(const at::Tensor& idx) const override {
    std::vector<at::Tensor> out;
    auto d = D().index_select(0, idx);
    if (has_weight()) out.push_back(d.transpose(1, 2).bmm(A().index_select(0, idx)));
    if (has_bias()) out.push_back(d.sum(1));
    return out;
  }

  at::Tensor gram(const at::Tensor& idx) const override {
    auto d = D().index_select(0, idx);  // [s, T, p]
    at::Tensor g = at::zeros({idx.size(0), idx.size(0)}, d.options());
    if (has_weight()) {
      auto x = A().index_select(0, idx);
      // <A_i A_j^T, D_i D_j^T>_F over all pairs.
      g += (at::einsum("itk,jsk->ijts", {x, x}) * at::einsum("itk,jsk->ijts", {d, d})).sum({2, 3});
    }
    if (has_bias()) {
      auto sd = d.sum(1);
      g += sd.mm(sd.t());
    }
    return g;
  }

  // One weight-gradient matmul per group: together the cost of one weight gradient.
  std::vector<at::Tensor> group_sums(const at::Tensor& order, const std::vector<int64_t>& sizes,
                                     const at::Tensor& onehot) const override {
    std::vector<at::Tensor> out;
    auto d = D();
    if (has_weight()) {
      auto ds = split_groups(d, order, sizes), xs = split_groups(A(), order, sizes);
      auto w = at::empty({static_cast<int64_t>(sizes.size()), d.size(2), a.size(-1)}, d.options());
      for (const auto k : c10::irange(sizes.size())) {
        auto dk = ds[k].reshape({-1, d.size(2)}), xk = xs[k].reshape({-1, a.size(-1)});
        auto wk = w[static_cast<int64_t>(k)];
        at::mm_out(wk, dk.t(), xk);
      }
      out.push_back(w);
    }
    if (has_bias()) out.push_back(onehot.t().to(d.scalar_type()).mm(d.sum(1)));
    return out;
  }

  std::optional<NormLayerOperands> fused_operands() const override {
    NormLayerOperands op;
    op.kind = NormLayerOperands::Kind::linear;
    op.weight = has_weight();
    op.bias = has_bias();
    op.input = op.weight ? a : at::Tensor();                   // [B*T, K]
    op.grad_output = slot->d.reshape({-1, slot->d.size(-1)});  // [B*T, P]
    return op;
  }

  at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const override {
    auto d = D();
    auto out = at::zeros({batch}, d.options());
    if (has_weight() && w.defined()) out += (d * at::matmul(A(), w.t())).sum({1, 2});
    if (has_bias() && b.defined()) out += (d.sum(1) * b).sum(1);
    return out;
  }
};

// Refuses a Linear layer whose batch rows cannot be established.
void check_linear_batch(const std::string& label, c10::IntArrayRef matrix, const std::vector<int64_t>& origin,
                        const std::string& how, int64_t batch) {
  TORCH_CHECK(matrix[0] % batch == 0, "per-sample gradients: Linear layer '", label, "' saw ", matrix[0],
              " rows, not a multiple of the batch size ", batch, " (inputs must be batch-first)");
  if (matrix[0] == batch) return;  // one row per sample, whatever the shape before
  TORCH_CHECK(!origin.empty(), "per-sample gradients: Linear layer '", label, "' multiplies a ", matrix,
              " matrix whose ", matrix[0], " rows (a multiple of the batch size ", batch, ") come from ", how,
              ", so its batch dimension cannot be established; give the layer a batch-first, "
              "contiguous [B, ..., F] tensor");
  const auto layout = batch_layout(origin, batch);
  TORCH_CHECK(layout != BatchLayout::ambiguous, "per-sample gradients: Linear layer '", label,
              "' input of shape ", c10::IntArrayRef(origin), " (", how,
              ") has more than one leading dimension of the batch size ", batch,
              ", so the batch dimension cannot be established; use a batch size that differs from the other "
              "dimensions");
  TORCH_CHECK(layout == BatchLayout::first, "per-sample gradients: Linear layer '", label,
              "' input of shape ", c10::IntArrayRef(origin), " (", how,
              ") is not batch-first for batch size ", batch,
              " (sequence-first [T, B, F] input?); transpose it to [B, T, F] before the layer");
}

// The weight's matmul: `saved` [R, F] is the matrix multiplied (input `input_slot` of the node).
std::unique_ptr<CapturedLayer> matmul_layer(const LayerSite& site, const at::Tensor& saved,
                                            const std::vector<int64_t>& matrix, size_t input_slot) {
  auto l = std::make_unique<LinearLayer>();
  if (site.weight) l->a = saved;
  TORCH_CHECK(!site.weight || l->a.defined(), "per-sample gradients: the input of Linear layer '", site.label,
              "' was not saved by autograd");
  TORCH_CHECK(matrix.size() == 2, "per-sample gradients: Linear layer '", site.label, "' multiplies a ",
              c10::IntArrayRef(matrix), " tensor, expected a matrix");
  std::string how;
  const auto origin = linear_origin(*site.node, input_slot, saved, matrix, how);
  check_linear_batch(site.label, matrix, origin, how, site.batch);
  return l;
}

// A bias added after the matmul (non-contiguous input): the add's output gradient
// is the layer's, shaped like its output; its batch layout is checked once captured.
std::unique_ptr<CapturedLayer> bias_add_layer(const LayerSite& site) {
  if (site.weight) unexpected_node(site, "Linear");
  TORCH_CHECK(site.parameter("bias").dim() == 1, "per-sample gradients: layer '", site.label,
              "' adds a bias of shape ", site.parameter("bias").sizes(),
              "; the Linear rule reads a 1-D bias over the last dimension");
  auto l = std::make_unique<LinearLayer>();
  l->check_output_layout = true;
  return l;
}

}  // namespace

void register_linear_rules(LayerRegistry& registry) {
  registry.add<gen::AddmmBackward0>("Linear", [](gen::AddmmBackward0& n, const LayerSite& site) {
    return matmul_layer(site, n.mat1_.unpack(), as_ints(n.mat1_sym_sizes), /*input_slot=*/1);
  });
  registry.add<gen::MmBackward0>("Linear", [](gen::MmBackward0& n, const LayerSite& site) {
    return matmul_layer(site, n.self_.unpack(), as_ints(n.self_sym_sizes), /*input_slot=*/0);
  });
  registry.add<gen::AddBackward0>(
      "Linear", [](gen::AddBackward0&, const LayerSite& site) { return bias_add_layer(site); });
}

}  // namespace sgdx::ops

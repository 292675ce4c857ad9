// Conv2d: the Linear rule with A_i = unfold(x_i) per group and T = output positions.
// Read from ConvolutionBackward0 (not transposed, 4-D input).
#include <c10/util/irange.h>
#include <torch/csrc/autograd/generated/Functions.h>

#include "registry.h"

namespace sgdx::ops {
namespace {

namespace gen = torch::autograd::generated;

// Input [B, C, H, W] as saved by ConvolutionBackward0, D [B, Cout, Ho, Wo].
class Conv2dLayer : public CapturedLayer {
 public:
  at::Tensor input;
  std::vector<int64_t> kernel, stride, padding, dilation, weight_shape;
  int64_t groups = 1;

  // Unfolded input per group, [B, G, Cin/G*kh*kw, L], and D per group, [B, G, Cout/G, L].
  at::Tensor X() const {
    auto u = at::im2col(input, kernel, dilation, padding, stride);  // [B, Cin*kh*kw, L]
    return u.reshape({batch, groups, -1, u.size(-1)});
  }
  at::Tensor Dg() const { return slot->d.reshape({batch, groups, -1, slot->d.size(2) * slot->d.size(3)}); }

  // Per-sample weight gradients of samples `idx`, [s, Cout, Cin/G, kh, kw], from
  // convolution backward without unfolding: chunks of c samples folded into the
  // groups of one call. Measured on 2 CPU cores, batch 128, ms for all samples
  // (c = 1 / 4 / 16 / 128): 32->64 5x5 at 14x14: 12.7 / 8.3 / 22.6 / 23.0;
  // 16->16 3x3 at 32x32: 8.6 / 3.3 / 2.2 / 2.9; 64->64 3x3 at 8x8:
  // 6.2 / 3.7 / 2.6 / 3.0; in the ResNet-style net as a whole, all samples in one
  // call beat c = 16 (1.7x vs 2.2x of plain). Hence c = 4 for weights of >= 40000
  // entries, else the whole batch.
  at::Tensor weight_grads(const at::Tensor& idx) const {
    auto x = rows(input, idx);
    auto d = rows(slot->d, idx);
    const int64_t s = x.size(0);
    const int64_t chunk = c10::multiply_integers(weight_shape) >= 40000 ? 4 : s;
    std::vector<int64_t> shape = {s};
    shape.insert(shape.end(), weight_shape.begin(), weight_shape.end());
    auto out = at::empty(shape, d.options());
    for (int64_t i = 0; i < s; i += chunk) {
      const int64_t c = std::min(chunk, s - i);
      auto xs = x.slice(0, i, i + c).reshape({1, c * x.size(1), x.size(2), x.size(3)});
      auto ds = d.slice(0, i, i + c).reshape({1, c * d.size(1), d.size(2), d.size(3)});
      std::vector<int64_t> wshape = weight_shape;
      wshape[0] *= c;
      auto g =
          at::convolution_backward(ds, xs, at::empty(wshape, d.options()), std::nullopt, stride, padding,
                                   dilation, /*transposed=*/false, {0, 0}, groups * c, {false, true, false});
      out.slice(0, i, i + c).copy_(std::get<1>(g).reshape(out.slice(0, i, i + c).sizes()));
    }
    return out;
  }

  at::Tensor sq_norms(NormStrategy strategy) const override {
    auto d = Dg();
    auto total = at::zeros({batch}, d.options());
    if (has_weight()) {
      const int64_t L = d.size(3), p = d.size(2);
      const int64_t k = c10::multiply_integers(weight_shape) / weight_shape[0];
      if (detail::weight_norm_rule(NormLayerOperands::Kind::conv2d, L, k, p, strategy) ==
          detail::NormRule::ghost) {
        auto x = X();
        auto xx = at::einsum("bgkl,bgkm->bglm", {x, x});
        auto dd = at::einsum("bgol,bgom->bglm", {d, d});
        total += (xx * dd).sum({1, 2, 3});
      } else {
        total +=
            at::linalg_vector_norm(weight_grads(all_samples(batch, d.device())).reshape({batch, -1}), 2, {1})
                .square();
      }
    }
    if (has_bias()) total += d.sum(3).pow(2).sum({1, 2});
    return total;
  }

  // One convolution weight-gradient per group: together the cost of one weight gradient.
  std::vector<at::Tensor> group_sums(const at::Tensor& order, const std::vector<int64_t>& sizes,
                                     const at::Tensor& onehot) const override {
    std::vector<at::Tensor> out;
    if (has_weight()) {
      auto xs = split_groups(input, order, sizes), ds = split_groups(slot->d, order, sizes);
      std::vector<int64_t> shape = {static_cast<int64_t>(sizes.size())};
      shape.insert(shape.end(), weight_shape.begin(), weight_shape.end());
      auto w = at::zeros(shape, slot->d.options());
      auto proto = at::empty(weight_shape, slot->d.options());
      for (const auto k : c10::irange(sizes.size())) {
        if (sizes[k] == 0) continue;
        auto g = at::convolution_backward(ds[k], xs[k], proto, std::nullopt, stride, padding, dilation,
                                          /*transposed=*/false, {0, 0}, groups, {false, true, false});
        w[static_cast<int64_t>(k)].copy_(std::get<1>(g));
      }
      out.push_back(w);
    }
    if (has_bias()) {
      auto d = Dg();
      out.push_back(onehot.t().to(d.scalar_type()).mm(d.sum(3).reshape({batch, -1})));
    }
    return out;
  }

  std::optional<NormLayerOperands> fused_operands() const override {
    NormLayerOperands op;
    op.kind = NormLayerOperands::Kind::conv2d;
    op.weight = has_weight();
    op.bias = has_bias();
    op.input = op.weight ? input : at::Tensor();
    op.grad_output = slot->d;
    op.kernel_h = kernel[0];
    op.kernel_w = kernel[1];
    op.stride_h = stride[0];
    op.stride_w = stride[1];
    op.pad_h = padding[0];
    op.pad_w = padding[1];
    op.dilation_h = dilation[0];
    op.dilation_w = dilation[1];
    op.groups = groups;
    return op;
  }

  std::vector<at::Tensor> grads(const at::Tensor& idx) const override {
    std::vector<at::Tensor> out;
    auto d = Dg().index_select(0, idx);
    if (has_weight()) out.push_back(weight_grads(idx));
    if (has_bias()) out.push_back(d.sum(3).reshape({idx.size(0), -1}));
    return out;
  }

  at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const override {
    auto d = Dg();
    auto out = at::zeros({batch}, d.options());
    if (has_weight() && w.defined()) {
      auto wm = w.reshape({groups, w.size(0) / groups, -1});  // [G, Cout/G, k]
      out += (at::einsum("gok,bgkl->bgol", {wm, X()}) * d).sum({1, 2, 3});
    }
    if (has_bias() && b.defined()) out += (d.sum(3).reshape({batch, -1}) * b).sum(1);
    return out;
  }
};

std::unique_ptr<CapturedLayer> conv2d_layer(gen::ConvolutionBackward0& n, const LayerSite& site) {
  TORCH_CHECK(!n.transposed, "per-sample gradients: transposed convolution in layer '", site.label, "'");
  const auto& w = site.parameter("weight");
  TORCH_CHECK(w.dim() == 4, "per-sample gradients: layer '", site.label, "' of type ", site.module_type,
              " is a ", w.dim() - 2, "-D convolution; the rule reads 2-D ones (Conv2d)");
  auto l = std::make_unique<Conv2dLayer>();
  l->input = n.input_.unpack();
  TORCH_CHECK(l->input.defined(), "per-sample gradients: the input of Conv2d layer '", site.label,
              "' was not saved by autograd");
  TORCH_CHECK(l->input.dim() == 4 && l->input.size(0) == site.batch, "per-sample gradients: Conv2d layer '",
              site.label, "' needs batched 4-D input with batch size ", site.batch, ", got ",
              l->input.sizes());
  l->weight_shape = w.sizes().vec();
  l->kernel = {w.size(2), w.size(3)};
  l->stride = as_ints(n.stride);
  l->padding = as_ints(n.padding);
  l->dilation = as_ints(n.dilation);
  l->groups = as_int(n.groups);
  return l;
}

}  // namespace

void register_conv2d_rules(LayerRegistry& registry) {
  registry.add<gen::ConvolutionBackward0>("Conv2d", conv2d_layer);
}

}  // namespace sgdx::ops

#include "sgdx/ops/per_sample.h"
#include "sgdx/ops/cuda_kernels.h"
#include "sgdx/ops/per_sample_cuda.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/nn/modules.h>

#include <algorithm>
#include <deque>
#include <map>
#include <unordered_map>
#include <unordered_set>

namespace sgdx::ops {

using torch::autograd::Node;
namespace gen = torch::autograd::generated;

namespace {

// The output gradient of one layer, written by a pre-hook during backward.
struct GradSlot {
  at::Tensor d;
};

// Keeps a reference to the gradient (no copy); the loss-reduction scale is
// applied to the results instead.
class CaptureHook : public torch::autograd::FunctionPreHook {
 public:
  explicit CaptureHook(std::shared_ptr<GradSlot> slot) : slot_(std::move(slot)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (!grads.empty() && grads[0].defined()) slot_->d = grads[0].detach();
    return grads;
  }

 private:
  std::shared_ptr<GradSlot> slot_;
};

// rows of t selected by idx, without a copy when idx is the whole batch.
at::Tensor rows(const at::Tensor& t, const at::Tensor& idx) {
  if (idx.numel() == t.size(0)) {
    const auto n = idx.numel();
    if (n == 0 || (idx[0].item<int64_t>() == 0 && idx.equal(at::arange(n, idx.options())))) return t;
  }
  return t.index_select(0, idx);
}

int64_t as_int(const c10::SymInt& s) {
  return s.expect_int();
}
std::vector<int64_t> as_ints(const std::vector<c10::SymInt>& v) {
  std::vector<int64_t> out;
  for (const auto& s : v) out.push_back(s.expect_int());
  return out;
}

// Where the batch lies in a layer input of shape `sizes` whose last dim is the
// features. The capture reads the input row-major as [B, rows/B, F]: true when
// the batch is the first dim not of size 1 and no other leading dim also has
// size B (then the shapes cannot say which one is the batch).
enum class BatchLayout { first, not_first, ambiguous };

BatchLayout batch_layout(c10::IntArrayRef sizes, int64_t batch) {
  if (batch == 1) return BatchLayout::first;  // every row belongs to the one sample
  const auto lead = sizes.slice(0, sizes.size() - 1);
  const auto hits = std::count(lead.begin(), lead.end(), batch);
  if (hits > 1) return BatchLayout::ambiguous;
  for (const auto s : lead) {
    if (s == batch) return BatchLayout::first;
    if (s != 1) break;
  }
  return BatchLayout::not_first;
}

// A sum over all dims but the first: [B, ...] -> [B].
at::Tensor per_row_sum(const at::Tensor& t) {
  return t.reshape({t.size(0), -1}).sum(1);
}

}  // namespace

class CapturedLayer {
 public:
  virtual ~CapturedLayer() = default;
  std::string name;                    // module name
  std::string weight_name, bias_name;  // full parameter names; empty when left out
  std::shared_ptr<GradSlot> slot = std::make_shared<GradSlot>();
  int64_t batch = 0;

  bool ready() const { return slot->d.defined(); }
  /// Refuses what only the captured gradient shows (called once it is ready).
  virtual void check_captured() const {}
  /// [B] squared norm of this layer's included parameters.
  virtual at::Tensor sq_norms(NormStrategy strategy) const = 0;
  /// Per-sample gradients of the included parameters for samples `idx`: weight then bias.
  virtual std::vector<at::Tensor> grads(const at::Tensor& idx) const = 0;
  /// [s, s] Gram matrix of samples `idx` (default: materialise and multiply).
  virtual at::Tensor gram(const at::Tensor& idx) const {
    std::vector<at::Tensor> flat;
    for (auto& g : grads(idx)) flat.push_back(g.reshape({g.size(0), -1}));
    auto f = at::cat(flat, 1);
    return f.mm(f.t());
  }
  /// [B] inner products with (weight direction, bias direction); undefined = zero.
  virtual at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const = 0;
  /// The operands of the fused CUDA norm kernel, when it handles this layer kind.
  virtual bool fused_operands(NormLayerOperands& /*out*/) const { return false; }
  /// Sums of the per-sample gradients over each group, [K, *shape] (weight then
  /// bias). `order` lists the samples sorted by group, `sizes` the group sizes
  /// (host) and `onehot` [B, K] the membership. Default: materialise and reduce.
  virtual std::vector<at::Tensor> group_sums(const at::Tensor& order, const std::vector<int64_t>& sizes,
                                             const at::Tensor& onehot) const {
    (void)order;
    (void)sizes;
    auto all = at::arange(batch, at::TensorOptions().dtype(at::kLong).device(slot->d.device()));
    std::vector<at::Tensor> out;
    for (auto& g : grads(all)) {
      auto shape = g.sizes().vec();
      shape[0] = onehot.size(1);
      out.push_back(onehot.t().to(g.scalar_type()).mm(g.reshape({g.size(0), -1})).reshape(shape));
    }
    return out;
  }
};

namespace {
// Splits the rows of t [B, ...] (taken in `order`) into consecutive groups of `sizes`.
std::vector<at::Tensor> split_groups(const at::Tensor& t, const at::Tensor& order,
                                     const std::vector<int64_t>& sizes) {
  return t.index_select(0, order).split_with_sizes(sizes, 0);
}
}  // namespace

namespace {

// Linear over T positions: A [B*T, d] (the layer input as its backward node
// saved it), D [B*T, p].
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
    if (!weight_name.empty()) {
      auto x = A();
      const int64_t T = d.size(1), p = d.size(2), din = x.size(2);
      if (T == 1) {
        total += x.squeeze(1).pow(2).sum(1) * d.squeeze(1).pow(2).sum(1);
      } else {
        const bool ghost =
            strategy == NormStrategy::ghost || (strategy == NormStrategy::automatic && 2 * T * T <= p * din);
        if (ghost) {
          total += (x.bmm(x.transpose(1, 2)) * d.bmm(d.transpose(1, 2))).sum({1, 2});
        } else {
          total += d.transpose(1, 2).bmm(x).pow(2).sum({1, 2});
        }
      }
    }
    if (!bias_name.empty()) total += d.sum(1).pow(2).sum(1);
    return total;
  }

  std::vector<at::Tensor> grads(const at::Tensor& idx) const override {
    std::vector<at::Tensor> out;
    auto d = D().index_select(0, idx);
    if (!weight_name.empty()) out.push_back(d.transpose(1, 2).bmm(A().index_select(0, idx)));
    if (!bias_name.empty()) out.push_back(d.sum(1));
    return out;
  }

  at::Tensor gram(const at::Tensor& idx) const override {
    auto d = D().index_select(0, idx);  // [s, T, p]
    at::Tensor g = at::zeros({idx.size(0), idx.size(0)}, d.options());
    if (!weight_name.empty()) {
      auto x = A().index_select(0, idx);
      // <A_i A_j^T, D_i D_j^T>_F over all pairs.
      g += (at::einsum("itk,jsk->ijts", {x, x}) * at::einsum("itk,jsk->ijts", {d, d})).sum({2, 3});
    }
    if (!bias_name.empty()) {
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
    if (!weight_name.empty()) {
      auto ds = split_groups(d, order, sizes), xs = split_groups(A(), order, sizes);
      auto w = at::empty({static_cast<int64_t>(sizes.size()), d.size(2), a.size(-1)}, d.options());
      for (const auto k : c10::irange(sizes.size())) {
        auto dk = ds[k].reshape({-1, d.size(2)}), xk = xs[k].reshape({-1, a.size(-1)});
        auto wk = w[k];
        at::mm_out(wk, dk.t(), xk);
      }
      out.push_back(w);
    }
    if (!bias_name.empty()) out.push_back(onehot.t().to(d.scalar_type()).mm(d.sum(1)));
    return out;
  }

  bool fused_operands(NormLayerOperands& op) const override {
    op.kind = NormLayerOperands::Kind::linear;
    op.weight = !weight_name.empty();
    op.bias = !bias_name.empty();
    op.input = op.weight ? a : at::Tensor();                   // [B*T, K]
    op.grad_output = slot->d.reshape({-1, slot->d.size(-1)});  // [B*T, P]
    return true;
  }

  at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const override {
    auto d = D();
    auto out = at::zeros({batch}, d.options());
    if (!weight_name.empty() && w.defined()) out += (d * at::matmul(A(), w.t())).sum({1, 2});
    if (!bias_name.empty() && b.defined()) out += (d.sum(1) * b).sum(1);
    return out;
  }
};

// Conv2d: input [B, C, H, W] as saved by ConvolutionBackward0, D [B, Cout, Ho, Wo].
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
    if (!weight_name.empty()) {
      const int64_t L = d.size(3), p = d.size(2);
      const int64_t k = c10::multiply_integers(weight_shape) / weight_shape[0];
      const bool ghost =
          strategy == NormStrategy::ghost || (strategy == NormStrategy::automatic && 2 * L * L <= p * k);
      if (ghost) {
        auto x = X();
        auto xx = at::einsum("bgkl,bgkm->bglm", {x, x});
        auto dd = at::einsum("bgol,bgom->bglm", {d, d});
        total += (xx * dd).sum({1, 2, 3});
      } else {
        auto all = at::arange(batch, at::TensorOptions().dtype(at::kLong).device(d.device()));
        total += at::linalg_vector_norm(weight_grads(all).reshape({batch, -1}), 2, {1}).square();
      }
    }
    if (!bias_name.empty()) total += d.sum(3).pow(2).sum({1, 2});
    return total;
  }

  // One convolution weight-gradient per group: together the cost of one weight gradient.
  std::vector<at::Tensor> group_sums(const at::Tensor& order, const std::vector<int64_t>& sizes,
                                     const at::Tensor& onehot) const override {
    std::vector<at::Tensor> out;
    if (!weight_name.empty()) {
      auto xs = split_groups(input, order, sizes), ds = split_groups(slot->d, order, sizes);
      std::vector<int64_t> shape = {static_cast<int64_t>(sizes.size())};
      shape.insert(shape.end(), weight_shape.begin(), weight_shape.end());
      auto w = at::zeros(shape, slot->d.options());
      auto proto = at::empty(weight_shape, slot->d.options());
      for (const auto k : c10::irange(sizes.size())) {
        if (sizes[k] == 0) continue;
        auto g = at::convolution_backward(ds[k], xs[k], proto, std::nullopt, stride, padding, dilation,
                                          /*transposed=*/false, {0, 0}, groups, {false, true, false});
        w[k].copy_(std::get<1>(g));
      }
      out.push_back(w);
    }
    if (!bias_name.empty()) {
      auto d = Dg();
      out.push_back(onehot.t().to(d.scalar_type()).mm(d.sum(3).reshape({batch, -1})));
    }
    return out;
  }

  bool fused_operands(NormLayerOperands& op) const override {
    op.kind = NormLayerOperands::Kind::conv2d;
    op.weight = !weight_name.empty();
    op.bias = !bias_name.empty();
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
    return true;
  }

  std::vector<at::Tensor> grads(const at::Tensor& idx) const override {
    std::vector<at::Tensor> out;
    auto d = Dg().index_select(0, idx);
    if (!weight_name.empty()) out.push_back(weight_grads(idx));
    if (!bias_name.empty()) out.push_back(d.sum(3).reshape({idx.size(0), -1}));
    return out;
  }

  at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const override {
    auto d = Dg();
    auto out = at::zeros({batch}, d.options());
    if (!weight_name.empty() && w.defined()) {
      auto wm = w.reshape({groups, w.size(0) / groups, -1});  // [G, Cout/G, k]
      out += (at::einsum("gok,bgkl->bgol", {wm, X()}) * d).sum({1, 2, 3});
    }
    if (!bias_name.empty() && b.defined()) out += (d.sum(3).reshape({batch, -1}) * b).sum(1);
    return out;
  }
};

// Embedding: indices [B, T] (as saved), D [B, T, dim]; padding_idx rows get no gradient.
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

// LayerNorm / GroupNorm affine parameters: per-sample gradients formed directly
// (they have as many entries as channels).
class NormLayer : public CapturedLayer {
 public:
  at::Tensor xhat;  // normalised input, same shape as the output
  std::vector<int64_t> param_shape;
  bool channel_first = false;  // GroupNorm: params index dim 1; LayerNorm: trailing dims

  // Sums a [B, ...] tensor over everything but the batch and parameter dims: [B, *param_shape].
  at::Tensor reduce(const at::Tensor& t) const {
    if (channel_first) return t.reshape({batch, t.size(1), -1}).sum(2);
    std::vector<int64_t> shape = {batch};
    shape.insert(shape.end(), param_shape.begin(), param_shape.end());
    return t.reshape({batch, -1, c10::multiply_integers(param_shape)}).sum(1).reshape(shape);
  }
  std::vector<at::Tensor> all() const {
    std::vector<at::Tensor> out;
    if (!weight_name.empty()) out.push_back(reduce(slot->d * xhat));
    if (!bias_name.empty()) out.push_back(reduce(slot->d));
    return out;
  }
  at::Tensor sq_norms(NormStrategy) const override {
    auto total = at::zeros({batch}, slot->d.options());
    for (auto& g : all()) total += per_row_sum(g.pow(2));
    return total;
  }
  std::vector<at::Tensor> grads(const at::Tensor& idx) const override {
    auto out = all();
    for (auto& g : out) g = g.index_select(0, idx);
    return out;
  }
  at::Tensor dot(const at::Tensor& w, const at::Tensor& b) const override {
    auto total = at::zeros({batch}, slot->d.options());
    auto g = all();
    size_t k = 0;
    if (!weight_name.empty()) {
      if (w.defined()) total += per_row_sum(g[k] * w);
      ++k;
    }
    if (!bias_name.empty() && b.defined()) total += per_row_sum(g[k] * b);
    return total;
  }
};

// The graph of one loss: for every node, the nodes that feed gradients into it
// (its "consumers" in the forward sense), with the input slot they use.
struct Graph {
  std::unordered_map<const Node*, std::vector<std::pair<std::shared_ptr<Node>, size_t>>> consumers;

  explicit Graph(const std::shared_ptr<Node>& root) {
    std::deque<std::shared_ptr<Node>> queue = {root};
    std::unordered_set<const Node*> seen = {root.get()};
    while (!queue.empty()) {
      auto node = queue.front();
      queue.pop_front();
      const auto& edges = node->next_edges();
      for (const auto k : c10::irange(edges.size())) {
        const auto& fn = edges[k].function;
        if (!fn) continue;
        consumers[fn.get()].emplace_back(node, k);
        if (seen.insert(fn.get()).second) queue.push_back(fn);
      }
    }
  }

  // The op node that consumes parameter p, skipping transposes and views.
  // Returns {nullptr, 0} when p is not in the graph.
  std::pair<std::shared_ptr<Node>, size_t> op_of(const at::Tensor& p, const std::string& layer,
                                                 const std::string& param) const {
    auto acc = torch::autograd::impl::try_get_grad_accumulator(p);
    if (!acc) return {nullptr, 0};
    const Node* cur = acc.get();
    for (int hops = 0; hops < 8; ++hops) {
      auto it = consumers.find(cur);
      if (it == consumers.end()) return {nullptr, 0};
      TORCH_CHECK(it->second.size() == 1, "per-sample gradients: parameter '", param, "' of layer '", layer,
                  "' is used ", it->second.size(), " times in the graph (shared weights are not supported)");
      const auto& [node, slot] = it->second.front();
      const Node* n = node.get();
      if (dynamic_cast<const gen::TBackward0*>(n) || dynamic_cast<const gen::ViewBackward0*>(n) ||
          dynamic_cast<const gen::UnsafeViewBackward0*>(n) ||
          dynamic_cast<const gen::ReshapeAliasBackward0*>(n)) {
        cur = n;
        continue;
      }
      return {node, slot};
    }
    TORCH_CHECK(false, "per-sample gradients: could not find the operation of layer '", layer, "'");
  }
};

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

[[noreturn]] void unexpected(const std::string& layer, const std::string& kind, const Node& node) {
  TORCH_CHECK(false, "per-sample gradients: ", kind, " layer '", layer, "' computes through ", node.name(),
              ", which sgdx does not recognise (expected the module's standard forward)");
}

bool is_view_node(const Node* n) {
  return dynamic_cast<const gen::ViewBackward0*>(n) || dynamic_cast<const gen::UnsafeViewBackward0*>(n) ||
         dynamic_cast<const gen::ReshapeAliasBackward0*>(n);
}

std::vector<int64_t> view_source_sizes(const Node* n) {
  if (auto* v = dynamic_cast<const gen::ViewBackward0*>(n)) return as_ints(v->self_sym_sizes);
  if (auto* v = dynamic_cast<const gen::UnsafeViewBackward0*>(n)) return as_ints(v->self_sym_sizes);
  return as_ints(dynamic_cast<const gen::ReshapeAliasBackward0*>(n)->self_sym_sizes);
}

// Elementwise ops of one tensor input: a row of their output is the same row of their input.
bool is_rowwise_node(const Node* n) {
  return dynamic_cast<const gen::ReluBackward0*>(n) || dynamic_cast<const gen::TanhBackward0*>(n) ||
         dynamic_cast<const gen::SigmoidBackward0*>(n) || dynamic_cast<const gen::GeluBackward0*>(n) ||
         dynamic_cast<const gen::SiluBackward0*>(n) || dynamic_cast<const gen::EluBackward0*>(n) ||
         dynamic_cast<const gen::LeakyReluBackward0*>(n) || dynamic_cast<const gen::HardtanhBackward0*>(n) ||
         dynamic_cast<const gen::SoftplusBackward0*>(n) ||
         dynamic_cast<const gen::NativeDropoutBackward0*>(n) || dynamic_cast<const gen::MulBackward1*>(n);
}

// Whether input `slot` of `n` is a parameter (a leaf that requires grad),
// possibly transposed; an input without gradient counts only if `required` is false.
bool is_parameter_edge(const Node& n, size_t slot, bool required) {
  const Node* f = n.next_edge(slot).function.get();
  if (f == nullptr) return !required;
  if (dynamic_cast<const gen::TBackward0*>(f)) f = f->next_edge(0).function.get();
  return dynamic_cast<const torch::autograd::AccumulateGrad*>(f) != nullptr;
}

// The shape whose row-major flattening is the [R, F] matrix a Linear layer
// multiplies, as far as the graph establishes it (empty when it does not);
// `how` says where the rows come from. Reshapes compose to one row-major
// reshape, so a chain of view/reshape nodes is followed to its start. A 2-D
// matrix made by row-wise ops (elementwise activations, a product with a
// parameter as an earlier Linear computes it) is followed up to the reshape
// that made its rows. Without gradients the saved
// matrix's view base is read instead, when the matrix covers whole
// leading-dim slices of a contiguous base. A matrix that is no view and has no
// graph is a 2-D input or a copy of a non-contiguous input made inside
// matmul: not established.
std::vector<int64_t> linear_origin(const Node& op, size_t input_slot, at::Tensor saved,
                                   std::vector<int64_t> matrix, std::string& how) {
  const Node* cur = &op;
  size_t slot = input_slot;
  bool first = true;
  for (int hops = 0; hops < 256; ++hops, first = false) {
    const Node* n = cur->next_edge(slot).function.get();
    if (n != nullptr && is_rowwise_node(n)) {
      cur = n;
      slot = 0;
      saved = at::Tensor();
      continue;
    }
    // An earlier Linear: output row r is input row r times a parameter (plus a parameter).
    if (auto* mm = dynamic_cast<const gen::AddmmBackward0*>(n);
        mm && is_parameter_edge(*n, 2, true) && is_parameter_edge(*n, 0, false)) {
      cur = n;
      slot = 1;
      saved = mm->mat1_.unpack();
      matrix = as_ints(mm->mat1_sym_sizes);
      continue;
    }
    if (auto* mm = dynamic_cast<const gen::MmBackward0*>(n); mm && is_parameter_edge(*n, 1, true)) {
      cur = n;
      slot = 0;
      saved = mm->self_.unpack();
      matrix = as_ints(mm->self_sym_sizes);
      continue;
    }
    if (n != nullptr && is_view_node(n)) {
      std::vector<int64_t> sizes, last;  // the earliest shape with the features last; the earliest shape
      for (; n != nullptr && is_view_node(n) && hops < 256; ++hops) {
        last = view_source_sizes(n);
        if (last.size() >= 2 && last.back() == matrix[1]) sizes = last;
        n = n->next_edge(0).function.get();
      }
      if (sizes.empty()) {
        how = "a reshape of a tensor of shape " + c10::str(c10::IntArrayRef(last)) +
              " that does not keep the feature dimension last";
        return {};
      }
      how = "a reshape of a tensor of shape " + c10::str(c10::IntArrayRef(sizes));
      return sizes;
    }
    if (n != nullptr) {
      how = first ? std::string("a 2-D tensor made by ") + n->name()
                  : std::string("row-wise operations on a 2-D tensor made by ") + n->name();
      return {};
    }
    if (!saved.defined()) {
      how = "a matrix with no recorded origin";
      return {};
    }
    if (!saved.is_view()) {
      how =
          "a matrix with no recorded reshape (no gradient flows into it and it is no view: a 2-D input, or a "
          "non-contiguous input copied inside matmul)";
      return {};
    }
    const auto base = saved._base();
    how = "a view of a tensor of shape " + c10::str(base.sizes());
    const auto offset = static_cast<int64_t>(static_cast<const char*>(saved.data_ptr()) -
                                             static_cast<const char*>(base.data_ptr())) /
                        static_cast<int64_t>(saved.element_size());
    if (base.dim() < 2 || !base.is_contiguous() || !saved.is_contiguous() || base.size(-1) != matrix[1] ||
        base.numel() == 0 || offset < 0 || base.scalar_type() != saved.scalar_type()) {
      how += " that sgdx cannot map to its rows";
      return {};
    }
    const int64_t inner = base.numel() / base.size(0);
    if (offset % inner != 0 || saved.numel() % inner != 0 || offset + saved.numel() > base.numel()) {
      how += " that does not cover whole slices of its first dimension";
      return {};
    }
    auto sizes = base.sizes().vec();
    sizes[0] = saved.numel() / inner;
    return sizes;
  }
  how = "a chain of operations too long to follow";
  return {};
}

// BatchNorm in eval mode (running statistics) is the per-channel affine map
// y = gamma * xhat + beta with xhat = (x - running_mean) / sqrt(running_var + eps)
// fixed per sample, so its per-sample gradients are those of GroupNorm's affine
// part. In training mode (or without running statistics) xhat uses the batch's
// statistics, which couple the samples: refused.
template <class N>
std::unique_ptr<CapturedLayer> batchnorm_eval(const std::string& label, N& n, double eps, int64_t batch) {
  TORCH_CHECK(
      !n.training, "per-sample gradients are not defined for BatchNorm layer '", label,
      "': in training mode (or with track_running_stats=false) it normalises with the statistics of the "
      "batch, which couple its samples (call eval() on it, use GroupNorm or LayerNorm, or ignore its "
      "parameters with PerSampleOptions::ignore)");
  auto x = n.input_.unpack();
  auto mean = n.running_mean_.unpack(), var = n.running_var_.unpack();
  TORCH_CHECK(x.defined() && mean.defined() && var.defined(),
              "per-sample gradients: the input or running statistics "
              "of BatchNorm layer '",
              label, "' were not saved by autograd");
  TORCH_CHECK(x.dim() >= 2 && x.size(0) == batch, "per-sample gradients: BatchNorm layer '", label,
              "' needs batch-first [B, C, ...] input with batch size ", batch, ", got ", x.sizes());
  std::vector<int64_t> channel(x.dim(), 1);
  channel[1] = x.size(1);
  auto l = std::make_unique<NormLayer>();
  l->xhat = (x - mean.reshape(channel)) * (var.reshape(channel) + eps).rsqrt();
  l->param_shape = {x.size(1)};
  l->channel_first = true;
  return l;
}

std::unique_ptr<CapturedLayer> batchnorm_layer(const std::string& label, Node& node, int64_t batch) {
  if (auto* n = dynamic_cast<gen::NativeBatchNormBackward0*>(&node))
    return batchnorm_eval(label, *n, n->eps, batch);
  if (auto* n = dynamic_cast<gen::CudnnBatchNormBackward0*>(&node))
    return batchnorm_eval(label, *n, n->epsilon, batch);
  if (auto* n = dynamic_cast<gen::MiopenBatchNormBackward0*>(&node))
    return batchnorm_eval(label, *n, n->epsilon, batch);
  unexpected(label, "BatchNorm", node);
}

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

}  // namespace

PerSampleGradients::PerSampleGradients(const torch::nn::Module& model, PerSampleOptions options)
    : model_(model), options_(std::move(options)) {
  for (const auto& item : model_.named_parameters(/*recurse=*/true)) param_names_.push_back(item.key());
  for (const auto& name : options_.ignore) {
    TORCH_CHECK(std::find(param_names_.begin(), param_names_.end(), name) != param_names_.end(),
                "per-sample gradients: ignored parameter '", name, "' is not a parameter of the model");
  }
}

PerSampleGradients::~PerSampleGradients() = default;

void PerSampleGradients::attach(const at::Tensor& loss, int64_t batch_size) {
  TORCH_CHECK(loss.defined() && loss.numel() == 1, "per-sample gradients: attach needs the scalar loss, got ",
              loss.defined() ? loss.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(loss.grad_fn() != nullptr,
              "per-sample gradients: the loss has no autograd graph (call attach before "
              "backward, with gradients enabled)");
  TORCH_CHECK(batch_size > 0, "per-sample gradients: batch_size must be positive, got ", batch_size);
  batch_size_ = batch_size;
  layers_.clear();
  const Graph graph(loss.grad_fn());
  const std::unordered_set<std::string> ignored(options_.ignore.begin(), options_.ignore.end());

  // The root is listed by hand: named_modules(include_self) needs it in a shared_ptr.
  std::vector<std::pair<std::string, const torch::nn::Module*>> modules = {{"", &model_}};
  for (const auto& item : model_.named_modules(/*name_prefix=*/"", /*include_self=*/false))
    modules.emplace_back(item.key(), item.value().get());
  for (const auto& [mname, mp] : modules) {
    const torch::nn::Module& m = *mp;
    // This module's own trainable, included parameters.
    std::map<std::string, at::Tensor> own;
    for (const auto& p : m.named_parameters(/*recurse=*/false)) {
      const auto full = join(mname, p.key());
      if (p.value().requires_grad() && !ignored.count(full)) own[p.key()] = p.value();
    }
    if (own.empty()) continue;
    const std::string label = mname.empty() ? std::string("<root>") : mname;
    const std::string type = m.name();
    const bool batchnorm = dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&m) ||
                           dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&m) ||
                           dynamic_cast<const torch::nn::BatchNorm3dImpl*>(&m);
    const bool linear = dynamic_cast<const torch::nn::LinearImpl*>(&m) != nullptr;
    const bool conv = dynamic_cast<const torch::nn::Conv2dImpl*>(&m) != nullptr;
    const bool embedding = dynamic_cast<const torch::nn::EmbeddingImpl*>(&m) != nullptr;
    const bool layernorm = dynamic_cast<const torch::nn::LayerNormImpl*>(&m) != nullptr;
    const bool groupnorm = dynamic_cast<const torch::nn::GroupNormImpl*>(&m) != nullptr;
    TORCH_CHECK(
        linear || conv || embedding || layernorm || groupnorm || batchnorm, "per-sample gradients: layer '",
        label, "' of type ", type,
        " has trainable parameters but is not supported (supported: Linear, "
        "Conv2d, Embedding, LayerNorm, GroupNorm, BatchNorm in eval mode); ignore its parameters with "
        "PerSampleOptions::ignore");
    for (const auto& [pname, _] : own) {
      TORCH_CHECK(pname == "weight" || pname == "bias", "per-sample gradients: layer '", label,
                  "' has an unexpected parameter '", pname, "'");
    }
    const bool has_w = own.count("weight") > 0, has_b = own.count("bias") > 0;
    // Locate the layer's op node from one of its included parameters.
    std::shared_ptr<Node> node;
    size_t slot = 0;
    for (const char* which : {"weight", "bias"}) {
      if (!own.count(which)) continue;
      std::tie(node, slot) = graph.op_of(own[which], label, join(mname, which));
      if (node) break;
    }
    if (!node) continue;  // not used by this loss: its per-sample gradients are zero
    std::unique_ptr<CapturedLayer> layer;
    if (linear) {
      auto l = std::make_unique<LinearLayer>();
      // The matrix the layer multiplies: its input with all leading dims flattened.
      at::Tensor saved;
      std::vector<int64_t> matrix;
      size_t input_slot = 0;
      if (auto* n = dynamic_cast<gen::AddmmBackward0*>(node.get())) {
        saved = n->mat1_.unpack();
        matrix = as_ints(n->mat1_sym_sizes);
        input_slot = 1;
      } else if (auto* n = dynamic_cast<gen::MmBackward0*>(node.get())) {
        saved = n->self_.unpack();
        matrix = as_ints(n->self_sym_sizes);
      } else if (!has_w && dynamic_cast<gen::AddBackward0*>(node.get())) {
        // bias only, added after a matmul: the add's output gradient is the layer's,
        // shaped like the layer's output; its batch layout is checked once captured.
        l->check_output_layout = true;
      } else {
        unexpected(label, "Linear", *node);
      }
      if (has_w) l->a = saved;
      TORCH_CHECK(!has_w || l->a.defined(), "per-sample gradients: the input of Linear layer '", label,
                  "' was not saved by autograd");
      if (!matrix.empty()) {
        TORCH_CHECK(matrix.size() == 2, "per-sample gradients: Linear layer '", label, "' multiplies a ",
                    c10::IntArrayRef(matrix), " tensor, expected a matrix");
        std::string how;
        const auto origin = linear_origin(*node, input_slot, saved, matrix, how);
        check_linear_batch(label, matrix, origin, how, batch_size);
      }
      layer = std::move(l);
    } else if (conv) {
      auto* n = dynamic_cast<gen::ConvolutionBackward0*>(node.get());
      if (n == nullptr) unexpected(label, "Conv2d", *node);
      TORCH_CHECK(!n->transposed, "per-sample gradients: transposed convolution in layer '", label, "'");
      auto l = std::make_unique<Conv2dLayer>();
      l->input = n->input_.unpack();
      TORCH_CHECK(l->input.defined(), "per-sample gradients: the input of Conv2d layer '", label,
                  "' was not saved by autograd");
      TORCH_CHECK(l->input.dim() == 4 && l->input.size(0) == batch_size,
                  "per-sample gradients: Conv2d layer '", label, "' needs batched 4-D input with batch size ",
                  batch_size, ", got ", l->input.sizes());
      const auto& w = dynamic_cast<const torch::nn::Conv2dImpl&>(m).weight;
      l->weight_shape = w.sizes().vec();
      l->kernel = {w.size(2), w.size(3)};
      l->stride = as_ints(n->stride);
      l->padding = as_ints(n->padding);
      l->dilation = as_ints(n->dilation);
      l->groups = as_int(n->groups);
      layer = std::move(l);
    } else if (embedding) {
      auto* n = dynamic_cast<gen::EmbeddingBackward0*>(node.get());
      if (n == nullptr) unexpected(label, "Embedding", *node);
      TORCH_CHECK(!n->scale_grad_by_freq, "per-sample gradients: Embedding layer '", label,
                  "' uses scale_grad_by_freq, which couples the samples of a batch");
      auto l = std::make_unique<EmbeddingLayer>();
      l->indices = n->indices_.unpack();
      l->padding_idx = as_int(n->padding_idx);
      l->num_embeddings = dynamic_cast<const torch::nn::EmbeddingImpl&>(m).weight.size(0);
      TORCH_CHECK(l->indices.dim() >= 1 && l->indices.size(0) == batch_size,
                  "per-sample gradients: Embedding layer '", label,
                  "' needs batch-first indices with batch size ", batch_size, ", got ", l->indices.sizes());
      layer = std::move(l);
    } else if (batchnorm) {
      layer = batchnorm_layer(label, *node, batch_size);
    } else {
      auto l = std::make_unique<NormLayer>();
      if (auto* n = dynamic_cast<gen::NativeLayerNormBackward0*>(node.get())) {
        if (!layernorm) unexpected(label, "GroupNorm", *node);
        auto x = n->input_.unpack();
        auto mean = n->result1_.unpack(node);
        auto rstd = n->result2_.unpack(node);
        l->xhat = (x - mean) * rstd;
        l->param_shape = as_ints(n->normalized_shape);
        TORCH_CHECK(x.size(0) == batch_size, "per-sample gradients: LayerNorm layer '", label,
                    "' needs batch-first input with batch size ", batch_size, ", got ", x.sizes());
      } else if (auto* n = dynamic_cast<gen::NativeGroupNormBackward0*>(node.get())) {
        if (!groupnorm) unexpected(label, "LayerNorm", *node);
        auto x = n->input_.unpack();
        const int64_t N = as_int(n->N), G = n->group;
        auto mean = n->result1_.unpack(node).reshape({N, G, 1});
        auto rstd = n->result2_.unpack(node).reshape({N, G, 1});
        l->xhat = ((x.reshape({N, G, -1}) - mean) * rstd).reshape(x.sizes());
        l->param_shape = {x.size(1)};
        l->channel_first = true;
        TORCH_CHECK(N == batch_size, "per-sample gradients: GroupNorm layer '", label, "' saw batch ", N,
                    ", expected ", batch_size);
      } else {
        unexpected(label, layernorm ? "LayerNorm" : "GroupNorm", *node);
      }
      layer = std::move(l);
    }
    layer->name = label;
    layer->batch = batch_size;
    if (has_w) layer->weight_name = join(mname, "weight");
    if (has_b) layer->bias_name = join(mname, "bias");
    node->add_pre_hook(std::make_unique<CaptureHook>(layer->slot));
    layers_.push_back(std::move(layer));
  }
}

bool PerSampleGradients::ready() const {
  return batch_size_ > 0 && std::all_of(layers_.begin(), layers_.end(), [](auto& l) { return l->ready(); });
}

void PerSampleGradients::check_ready() const {
  TORCH_CHECK(batch_size_ > 0, "per-sample gradients: call attach(loss, batch_size) before backward");
  for (const auto& l : layers_) {
    TORCH_CHECK(l->ready(), "per-sample gradients: no output gradient was captured for layer '", l->name,
                "' (call backward on the attached loss first)");
    l->check_captured();
  }
}

at::Tensor PerSampleGradients::layer_squared_norms() const {
  check_ready();
  std::vector<at::Tensor> rows;
  bool fused = options_.backend == PerSampleBackend::fused_cuda;
  if (options_.backend == PerSampleBackend::automatic && fused_cuda_default(CudaKernel::per_sample_norms)) {
    fused = std::all_of(layers_.begin(), layers_.end(), [](const auto& l) { return l->slot->d.is_cuda(); });
  }
  if (fused) {
    at::AutoGradMode no_grad(false);
    std::vector<NormLayerOperands> ops;
    std::vector<size_t> fused;  // layer index of each operand set
    rows.resize(layers_.size());
    for (const auto k : c10::irange(layers_.size())) {
      const auto& d = layers_[k]->slot->d;
      TORCH_CHECK(d.is_cuda(),
                  "per-sample gradients: backend fused_cuda needs the model on a CUDA device; layer '",
                  layers_[k]->name, "' is on ", d.device());
      NormLayerOperands op;
      if (layers_[k]->fused_operands(op)) {
        op.strategy = options_.strategy;
        ops.push_back(std::move(op));
        fused.push_back(k);
      } else {
        rows[k] = layers_[k]->sq_norms(options_.strategy).to(at::kFloat);
      }
    }
    if (!ops.empty()) {
      auto norms = per_sample_sq_norms_cuda(ops, batch_size_);
      for (const auto j : c10::irange(fused.size())) rows[fused[j]] = norms[j];
    }
  } else {
    for (const auto& l : layers_) rows.push_back(l->sq_norms(options_.strategy));
  }
  if (rows.empty()) return at::zeros({0, batch_size_}, at::kDouble);
  return at::stack(rows) * (scale() * scale());
}

std::vector<std::string> PerSampleGradients::layer_names() const {
  std::vector<std::string> names;
  for (const auto& l : layers_) names.push_back(l->name);
  return names;
}

at::Tensor PerSampleGradients::squared_norms() const {
  auto per_layer = layer_squared_norms();
  return per_layer.size(0) == 0 ? at::zeros({batch_size_}, at::kDouble) : per_layer.sum(0);
}

at::Tensor PerSampleGradients::norms() const {
  return squared_norms().clamp_min(0).sqrt();
}

at::Tensor PerSampleGradients::gram(const at::Tensor& subset) const {
  check_ready();
  TORCH_CHECK(subset.dim() == 1 && subset.scalar_type() == at::kLong,
              "per-sample gradients: gram needs a 1-D int64 "
              "index tensor, got ",
              subset.scalar_type(), " ", subset.sizes());
  TORCH_CHECK(subset.numel() == 0 ||
                  (subset.min().item<int64_t>() >= 0 && subset.max().item<int64_t>() < batch_size_),
              "per-sample gradients: subset indices must be in [0, ", batch_size_, ")");
  at::Tensor g;
  for (const auto& l : layers_) {
    auto idx = subset.to(l->slot->d.device());
    auto part = l->gram(idx);
    g = g.defined() ? g + part : part;
  }
  return g.defined() ? g * (scale() * scale()) : at::zeros({subset.numel(), subset.numel()}, at::kDouble);
}

at::Tensor PerSampleGradients::dot(const std::vector<at::Tensor>& direction) const {
  check_ready();
  TORCH_CHECK(direction.size() == param_names_.size(), "per-sample gradients: direction has ",
              direction.size(), " tensors but the model has ", param_names_.size(), " parameters");
  std::unordered_map<std::string, at::Tensor> by_name;
  const auto params = model_.named_parameters(/*recurse=*/true);
  for (const auto k : c10::irange(direction.size())) {
    const auto& d = direction[k];
    if (d.defined()) {
      TORCH_CHECK(d.sizes() == params[param_names_[k]].sizes(), "per-sample gradients: direction for '",
                  param_names_[k], "' has shape ", d.sizes(), ", the parameter has ",
                  params[param_names_[k]].sizes());
    }
    by_name[param_names_[k]] = d;
  }
  at::Tensor total;
  for (const auto& l : layers_) {
    auto w = l->weight_name.empty() ? at::Tensor() : by_name[l->weight_name];
    auto b = l->bias_name.empty() ? at::Tensor() : by_name[l->bias_name];
    auto part = l->dot(w, b);
    total = total.defined() ? total + part : part;
  }
  return total.defined() ? total * scale() : at::zeros({batch_size_}, at::kDouble);
}

std::vector<at::Tensor> PerSampleGradients::group_sums(const at::Tensor& assignment, int64_t groups) const {
  check_ready();
  at::AutoGradMode no_grad(false);  // saved layer inputs may require grad
  TORCH_CHECK(groups >= 1, "per-sample gradients: group_sums needs groups >= 1, got ", groups);
  TORCH_CHECK(
      assignment.dim() == 1 && assignment.scalar_type() == at::kLong && assignment.numel() == batch_size_,
      "per-sample gradients: group_sums needs a 1-D int64 assignment of ", batch_size_, " samples, got ",
      assignment.scalar_type(), " ", assignment.sizes());
  TORCH_CHECK(assignment.min().item<int64_t>() >= 0 && assignment.max().item<int64_t>() < groups,
              "per-sample gradients: group indices must be in [0, ", groups, "), got [",
              assignment.min().item<int64_t>(), ", ", assignment.max().item<int64_t>(), "]");
  const auto params = model_.named_parameters(/*recurse=*/true);
  std::unordered_map<std::string, size_t> index;
  for (const auto k : c10::irange(param_names_.size())) index[param_names_[k]] = k;
  std::vector<at::Tensor> out(param_names_.size());
  const std::unordered_set<std::string> ignored(options_.ignore.begin(), options_.ignore.end());
  for (const auto k : c10::irange(param_names_.size())) {
    const auto& p = params[param_names_[k]];
    if (!p.requires_grad() || ignored.count(param_names_[k])) continue;
    auto shape = p.sizes().vec();
    shape.insert(shape.begin(), groups);
    out[k] = at::zeros(shape, p.options());  // parameters the loss does not use
  }
  auto sizes_t = at::bincount(assignment.cpu(), {}, groups);
  std::vector<int64_t> sizes(sizes_t.data_ptr<int64_t>(), sizes_t.data_ptr<int64_t>() + groups);
  for (const auto& l : layers_) {
    const auto dev = l->slot->d.device();
    auto a = assignment.to(dev);
    auto order = at::argsort(a, /*stable=*/true);
    auto onehot = at::one_hot(a, groups);
    auto sums = l->group_sums(order, sizes, onehot);
    size_t j = 0;
    for (const auto* name : {&l->weight_name, &l->bias_name}) {
      if (name->empty()) continue;
      out[index.at(*name)] = sums[j++] * scale();
    }
  }
  return out;
}

std::vector<at::Tensor> PerSampleGradients::parameters() const {
  return model_.parameters(/*recurse=*/true);
}

at::Tensor PerSampleGradients::per_sample_grad(const std::string& parameter_name) const {
  check_ready();
  for (const auto& l : layers_) {
    if (l->weight_name != parameter_name && l->bias_name != parameter_name) continue;
    auto all = at::arange(batch_size_, at::TensorOptions().dtype(at::kLong).device(l->slot->d.device()));
    auto g = l->grads(all);
    return (l->weight_name == parameter_name ? g.front() : g.back()) * scale();
  }
  TORCH_CHECK(false, "per-sample gradients: no captured layer holds parameter '", parameter_name, "'");
}

}  // namespace sgdx::ops

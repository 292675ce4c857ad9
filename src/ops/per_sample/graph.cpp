#include "graph.h"

#include <c10/util/irange.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/csrc/autograd/generated/Functions.h>
#include <torch/csrc/autograd/variable.h>

#include <deque>
#include <unordered_set>

#include "captured_layer.h"

namespace sgdx::ops {

using torch::autograd::Node;
namespace gen = torch::autograd::generated;

Graph::Graph(const std::shared_ptr<Node>& root) {
  std::deque<std::shared_ptr<Node>> queue = {root};
  std::unordered_set<const Node*> seen = {root.get()};
  while (!queue.empty()) {
    auto node = queue.front();
    queue.pop_front();
    const auto& edges = node->next_edges();
    for (const auto k : c10::irange(edges.size())) {
      const auto& fn = edges[k].function;
      if (!fn) continue;
      consumers_[fn.get()].emplace_back(node, k);
      if (seen.insert(fn.get()).second) queue.push_back(fn);
    }
  }
}

namespace {

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

// Where the rows of a Linear input are being traced: input `slot` of `op`, the
// matrix as autograd saved it (undefined past a row-wise op) and its [R, F] shape.
struct RowTrace {
  const Node* op;
  size_t slot;
  at::Tensor saved;
  std::vector<int64_t> matrix;
};

// Steps back through `n` when its output rows are its input rows: a row-wise op,
// or an earlier Linear (output row r is input row r times a parameter, plus one).
bool step_back_keeping_rows(const Node* n, RowTrace& t) {
  if (n != nullptr && is_rowwise_node(n)) {
    t = {n, 0, at::Tensor(), std::move(t.matrix)};
    return true;
  }
  if (auto* mm = dynamic_cast<const gen::AddmmBackward0*>(n);
      mm && is_parameter_edge(*n, 2, true) && is_parameter_edge(*n, 0, false)) {
    t = {n, 1, mm->mat1_.unpack(), as_ints(mm->mat1_sym_sizes)};
    return true;
  }
  if (auto* mm = dynamic_cast<const gen::MmBackward0*>(n); mm && is_parameter_edge(*n, 1, true)) {
    t = {n, 0, mm->self_.unpack(), as_ints(mm->self_sym_sizes)};
    return true;
  }
  return false;
}

// Reshapes compose to one row-major reshape: the chain of view nodes from `n` is
// followed to its start, and the earliest shape with the features last is the origin.
std::vector<int64_t> origin_of_views(const Node* n, int64_t features, int hops, std::string& how) {
  std::vector<int64_t> sizes, last;  // the earliest shape with the features last; the earliest shape
  for (; n != nullptr && is_view_node(n) && hops < 256; ++hops) {
    last = view_source_sizes(n);
    if (last.size() >= 2 && last.back() == features) sizes = last;
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

// Without gradients the saved matrix's view base is read instead, when the
// matrix covers whole leading-dim slices of a contiguous base. A matrix that is
// no view is a 2-D input or a copy of a non-contiguous input made inside matmul.
std::vector<int64_t> origin_of_view_base(const at::Tensor& saved, int64_t features, std::string& how) {
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
  const auto& base = saved._base();
  how = "a view of a tensor of shape " + c10::str(base.sizes());
  const auto offset = static_cast<int64_t>(static_cast<const char*>(saved.data_ptr()) -
                                           static_cast<const char*>(base.data_ptr())) /
                      static_cast<int64_t>(saved.element_size());
  if (base.dim() < 2 || !base.is_contiguous() || !saved.is_contiguous() || base.size(-1) != features ||
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

}  // namespace

std::pair<std::shared_ptr<Node>, size_t> Graph::op_of(const at::Tensor& p, const std::string& layer,
                                                      const std::string& param) const {
  auto acc = torch::autograd::impl::try_get_grad_accumulator(p);
  if (!acc) return {nullptr, 0};
  const Node* cur = acc.get();
  for (int hops = 0; hops < 8; ++hops) {
    auto it = consumers_.find(cur);
    if (it == consumers_.end()) return {nullptr, 0};
    TORCH_CHECK(it->second.size() == 1, "per-sample gradients: parameter '", param, "' of layer '", layer,
                "' is used ", it->second.size(), " times in the graph (shared weights are not supported)");
    const auto& [node, slot] = it->second.front();
    const Node* n = node.get();
    if (dynamic_cast<const gen::TBackward0*>(n) || is_view_node(n)) {
      cur = n;
      continue;
    }
    return {node, slot};
  }
  TORCH_CHECK(false, "per-sample gradients: could not find the operation of layer '", layer, "'");
}

// A 2-D matrix made by row-wise ops is followed up to the reshape that made its
// rows; a matrix with no graph is read through its view base.
std::vector<int64_t> linear_origin(const Node& op, size_t input_slot, at::Tensor saved,
                                   std::vector<int64_t> matrix, std::string& how) {
  RowTrace t{&op, input_slot, std::move(saved), std::move(matrix)};
  bool first = true;
  for (int hops = 0; hops < 256; ++hops, first = false) {
    const Node* n = t.op->next_edge(t.slot).function.get();
    if (step_back_keeping_rows(n, t)) continue;
    if (n != nullptr && is_view_node(n)) return origin_of_views(n, t.matrix[1], hops, how);
    if (n != nullptr) {
      how = first ? std::string("a 2-D tensor made by ") + n->name()
                  : std::string("row-wise operations on a 2-D tensor made by ") + n->name();
      return {};
    }
    return origin_of_view_base(t.saved, t.matrix[1], how);
  }
  how = "a chain of operations too long to follow";
  return {};
}

}  // namespace sgdx::ops

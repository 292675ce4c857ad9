#pragma once
// Walking the autograd graph of one loss: from a parameter to the op it feeds,
// and from a Linear op back to the shape its input rows were flattened from.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sgdx::ops {

/// The graph of one loss: for every node, the nodes that feed gradients into it
/// (its "consumers" in the forward sense), with the input slot they use.
class Graph {
 public:
  explicit Graph(const std::shared_ptr<torch::autograd::Node>& root);

  /// The op node that consumes parameter p, skipping transposes and views, and
  /// the input slot p enters it by; {nullptr, 0} when p is not in the graph.
  std::pair<std::shared_ptr<torch::autograd::Node>, size_t> op_of(const at::Tensor& p,
                                                                  const std::string& layer,
                                                                  const std::string& param) const;

 private:
  std::unordered_map<const torch::autograd::Node*,
                     std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, size_t>>>
      consumers_;
};

/// The shape whose row-major flattening is the [R, F] `matrix` a Linear op
/// multiplies (its input `input_slot`, `saved` as autograd kept it), as far as
/// the graph establishes it; empty when it does not. `how` says where the rows
/// come from.
std::vector<int64_t> linear_origin(const torch::autograd::Node& op, size_t input_slot, at::Tensor saved,
                                   std::vector<int64_t> matrix, std::string& how);

}  // namespace sgdx::ops

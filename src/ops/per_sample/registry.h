#pragma once
// The per-sample layer rules, keyed by the autograd node type a layer's
// parameters feed (docs/per_sample_layers.md). The node, not the module, picks
// the rule, so any module that computes through a registered node (a torch::nn
// module in C++, later a Python one) is captured the same way; module names only
// label errors.
#include <torch/csrc/autograd/function.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <typeindex>
#include <unordered_map>
#include <vector>

#include "captured_layer.h"

namespace sgdx::ops {

/// What a rule reads to capture one layer.
struct LayerSite {
  std::string label;                             // module name ("<root>" for the model itself), for errors
  std::string module_type;                       // for errors only
  std::shared_ptr<torch::autograd::Node> node;   // the op the layer's parameters feed
  std::map<std::string, at::Tensor> parameters;  // the module's own parameters, included or not
  bool weight = false, bias = false;             // which of them the results include
  int64_t batch = 0;

  const at::Tensor& parameter(const std::string& name) const;
};

/// Builds the captured layer of `site`, whose node has the rule's node type.
using LayerBuilder = std::function<std::unique_ptr<CapturedLayer>(torch::autograd::Node&, const LayerSite&)>;

/// One node type served by a rule.
struct NodeRule {
  std::type_index node;
  std::string layer;  // the layer kind, e.g. "Linear" (error messages, the supported list)
  LayerBuilder build;
};

class LayerRegistry {
 public:
  /// Serves autograd node type N with `build`; a node type is served once.
  template <class N>
  void add(const std::string& layer,
           std::function<std::unique_ptr<CapturedLayer>(N&, const LayerSite&)> build) {
    add_node(typeid(N), layer, [build = std::move(build)](torch::autograd::Node& n, const LayerSite& site) {
      return build(static_cast<N&>(n), site);  // the registry matched typeid(n) == typeid(N)
    });
  }
  /// The rule for `node`'s exact type, or nullptr.
  const NodeRule* find(const torch::autograd::Node& node) const;
  /// Every node type served, in registration order.
  const std::vector<NodeRule>& rules() const { return rules_; }
  /// The layer kinds served, in registration order: "Linear, Conv2d, ...".
  std::string layer_kinds() const;

 private:
  void add_node(std::type_index node, const std::string& layer, LayerBuilder build);
  std::vector<NodeRule> rules_;
  std::unordered_map<std::type_index, size_t> index_;
};

/// The built-in rules (registry.cpp lists every rule file's registration).
const LayerRegistry& layer_registry();

/// The node type's name as autograd prints it ("AddmmBackward0").
std::string node_type_name(std::type_index node);

/// Refuses a node of a registered type used in a way the rule does not read.
[[noreturn]] void unexpected_node(const LayerSite& site, const std::string& layer);

// One registration function per rule file.
void register_linear_rules(LayerRegistry& registry);
void register_conv2d_rules(LayerRegistry& registry);
void register_embedding_rules(LayerRegistry& registry);
void register_layer_norm_rules(LayerRegistry& registry);
void register_group_norm_rules(LayerRegistry& registry);
void register_batch_norm_rules(LayerRegistry& registry);

}  // namespace sgdx::ops

#include "registry.h"

#include <c10/util/Exception.h>
#include <c10/util/Type.h>

#include <algorithm>

namespace sgdx::ops {

const at::Tensor& LayerSite::parameter(const std::string& name) const {
  const auto it = parameters.find(name);
  TORCH_CHECK(it != parameters.end(), "per-sample gradients: layer '", label, "' of type ", module_type,
              " has no parameter '", name, "'");
  return it->second;
}

void LayerRegistry::add_node(std::type_index node, const std::string& layer, LayerBuilder build) {
  TORCH_CHECK(!index_.count(node), "per-sample gradients: node type ", node_type_name(node),
              " already has a layer rule (", rules_[index_.at(node)].layer, ")");
  index_.emplace(node, rules_.size());
  rules_.push_back({node, layer, std::move(build)});
}

const NodeRule* LayerRegistry::find(const torch::autograd::Node& node) const {
  const auto it = index_.find(typeid(node));
  return it == index_.end() ? nullptr : &rules_[it->second];
}

std::string LayerRegistry::layer_kinds() const {
  std::vector<std::string> kinds;
  for (const auto& r : rules_) {
    if (std::find(kinds.begin(), kinds.end(), r.layer) == kinds.end()) kinds.push_back(r.layer);
  }
  std::string out;
  for (const auto& k : kinds) out += (out.empty() ? "" : ", ") + k;
  return out;
}

// An explicit list, not self-registering objects: a static library drops object
// files nothing references, and with them their registrations.
const LayerRegistry& layer_registry() {
  static const LayerRegistry registry = [] {
    LayerRegistry r;
    register_linear_rules(r);
    register_conv2d_rules(r);
    register_embedding_rules(r);
    register_layer_norm_rules(r);
    register_group_norm_rules(r);
    register_batch_norm_rules(r);
    return r;
  }();
  return registry;
}

std::string node_type_name(std::type_index node) {
  const auto full = c10::demangle(node.name());
  const auto colon = full.rfind("::");
  return colon == std::string::npos ? full : full.substr(colon + 2);
}

void unexpected_node(const LayerSite& site, const std::string& layer) {
  TORCH_CHECK(false, "per-sample gradients: ", layer, " layer '", site.label, "' computes through ",
              site.node->name(), ", which sgdx does not recognise (expected the module's standard forward)");
}

std::vector<PerSampleLayerRule> per_sample_layer_rules() {
  std::vector<PerSampleLayerRule> out;
  for (const auto& r : layer_registry().rules()) {
    if (out.empty() || out.back().layer != r.layer) out.push_back({r.layer, {}});
    out.back().nodes.push_back(node_type_name(r.node));
  }
  return out;
}

}  // namespace sgdx::ops

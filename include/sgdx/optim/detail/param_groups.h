#pragma once
#include <torch/optim/optimizer.h>

#include <memory>

namespace sgdx::optim::detail {

/// Adds `group` to `opt` and keeps the group's own options. LibTorch >= 2.8's
/// Optimizer::add_param_group replaces the explicit options of a custom
/// optimizer's group with the defaults (it merges only its built-in types).
/// Explicit options must be `Options` and pass its validate().
template <typename Options>
void add_param_group_keeping_options(torch::optim::Optimizer& opt,
                                     const torch::optim::OptimizerParamGroup& group,
                                     const char* optimizer_name) {
  std::unique_ptr<torch::optim::OptimizerOptions> own;
  if (group.has_options()) {
    const auto* o = dynamic_cast<const Options*>(&group.options());
    TORCH_CHECK(o != nullptr, optimizer_name, ": parameter group ", opt.param_groups().size(),
                " has options of another optimizer");
    o->validate();
    own = std::make_unique<Options>(*o);
  }
  opt.add_param_group(group);  // Optimizer's (non-virtual) version
  if (own) opt.param_groups().back().set_options(std::move(own));
}

}  // namespace sgdx::optim::detail

#pragma once
// What every sgdx optimizer does with its parameter groups and their state: the
// options of a group as the optimizer's own type, groups that keep their options,
// state moved to its parameter after a load, and one bucket per (device, dtype).
#include <torch/optim/optimizer.h>
#include <torch/optim/serialize.h>

#include <memory>
#include <utility>
#include <vector>

namespace sgdx::optim::detail {

/// The options of parameter group `group` as `Options`, or an error naming the
/// optimizer `who` (whose options type is `sgdx::optim::<who>Options`).
template <typename Options>
const Options& options_as(const torch::optim::OptimizerOptions& o, size_t group, const char* who) {
  const auto* r = dynamic_cast<const Options*>(&o);
  TORCH_CHECK(r != nullptr, who, ": parameter group ", group,
              " has options of another optimizer; pass sgdx::optim::", who, "Options");
  return *r;
}

template <typename Options>
Options& options_as(torch::optim::OptimizerOptions& o, size_t group, const char* who) {
  return const_cast<Options&>(options_as<Options>(std::as_const(o), group, who));
}

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
    const auto& o = options_as<Options>(group.options(), opt.param_groups().size(), optimizer_name);
    o.validate();
    own = std::make_unique<Options>(o);
  }
  opt.add_param_group(group);  // Optimizer's (non-virtual) version
  if (own) opt.param_groups().back().set_options(std::move(own));
}

/// `t` on the device of parameter `p`, contiguous; an undefined tensor stays undefined.
inline at::Tensor to_device_of(const at::Tensor& t, const at::Tensor& p) {
  return t.defined() ? t.to(p.device()).contiguous() : t;
}

/// A loaded state tensor must have the shape and dtype of its parameter.
inline void check_loaded_like(const at::Tensor& t, const at::Tensor& p, const char* who) {
  TORCH_CHECK(t.defined(), who, "::load: the saved state of a parameter of shape ", p.sizes(),
              " has no tensor");
  TORCH_CHECK(t.sizes() == p.sizes(), who, "::load: saved state has shape ", t.sizes(),
              " but the parameter has ", p.sizes());
  TORCH_CHECK(t.scalar_type() == p.scalar_type(), who, "::load: saved state has dtype ", t.scalar_type(),
              " but the parameter has ", p.scalar_type());
}

/// Loads `opt` (state and group options, LibTorch's layout) from `archive`, then
/// calls place(parameter, state) for every parameter that has state: the place to
/// check it and move it to the parameter's device (to_device_of).
template <typename ParamState, typename Options, typename Place>
void load_then_place(torch::optim::Optimizer& opt, torch::serialize::InputArchive& archive, Place&& place) {
  torch::optim::serialize<ParamState, Options>(archive, opt);
  for (auto& group : opt.param_groups()) {
    for (auto& p : group.params()) {
      auto it = opt.state().find(p.unsafeGetTensorImpl());
      if (it != opt.state().end()) place(p, static_cast<ParamState&>(*it->second));
    }
  }
}

/// Items grouped by (device, dtype) in order of first appearance: one fused call per bucket.
template <typename Bucket>
class DeviceDtypeBuckets {
 public:
  struct Entry {
    c10::Device device;
    at::ScalarType dtype = at::ScalarType::Undefined;
    Bucket bucket;
  };
  /// The bucket of `t`'s device and dtype, appended on first use.
  Bucket& operator[](const at::Tensor& t) {
    for (auto& e : entries_)
      if (e.device == t.device() && e.dtype == t.scalar_type()) return e.bucket;
    entries_.push_back(Entry{t.device(), t.scalar_type(), Bucket{}});
    return entries_.back().bucket;
  }
  auto begin() { return entries_.begin(); }
  auto end() { return entries_.end(); }

 private:
  std::vector<Entry> entries_;
};

}  // namespace sgdx::optim::detail

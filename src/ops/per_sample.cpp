#include "sgdx/ops/per_sample.h"

#include <c10/util/irange.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <map>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "per_sample/captured_layer.h"
#include "per_sample/graph.h"
#include "per_sample/registry.h"
#include "sgdx/ops/cuda_kernels.h"
#include "sgdx/ops/per_sample_cuda.h"

namespace sgdx::ops {

namespace {

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

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

// The model and every module under it, with their names ("" for the model). The
// root is listed by hand: named_modules(include_self) needs it in a shared_ptr.
std::vector<std::pair<std::string, const torch::nn::Module*>> modules_of(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, const torch::nn::Module*>> modules = {{"", &model}};
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false))
    modules.emplace_back(item.key(), item.value().get());
  return modules;
}

// A layer no rule serves: named with its module's type, and the kinds that are served.
[[noreturn]] void refuse_unsupported(const LayerSite& site, const std::string& why) {
  TORCH_CHECK(false, "per-sample gradients: layer '", site.label, "' of type ", site.module_type,
              " has trainable parameters but is not supported (", why,
              "; supported: ", layer_registry().layer_kinds(),
              "); ignore its parameters with PerSampleOptions::ignore");
}

// The layer of module `m` named `mname`: its included parameters and the op they
// feed. nullopt when it has none, or when the loss does not use them (their
// per-sample gradients are zero).
std::optional<LayerSite> find_site(const std::string& mname, const torch::nn::Module& m, const Graph& graph,
                                   const std::unordered_set<std::string>& ignored, int64_t batch) {
  LayerSite site;
  std::map<std::string, at::Tensor> own;  // trainable and not ignored
  for (const auto& p : m.named_parameters(/*recurse=*/false)) {
    site.parameters[p.key()] = p.value();
    if (p.value().requires_grad() && !ignored.count(join(mname, p.key()))) own[p.key()] = p.value();
  }
  if (own.empty()) return std::nullopt;
  site.label = mname.empty() ? std::string("<root>") : mname;
  site.module_type = m.name();
  site.batch = batch;
  for (const auto& [pname, _] : own) {
    if (pname != "weight" && pname != "bias")
      refuse_unsupported(site, "its parameter '" + pname + "' is neither a weight nor a bias");
  }
  site.weight = own.count("weight") > 0;
  site.bias = own.count("bias") > 0;
  for (const char* which : {"weight", "bias"}) {
    if (!own.count(which)) continue;
    site.node = graph.op_of(own[which], site.label, join(mname, which)).first;
    if (site.node) return site;
  }
  return std::nullopt;
}

// Builds the layer with the rule registered for its node and hooks its output gradient.
std::unique_ptr<CapturedLayer> capture(const LayerSite& site, const std::string& mname) {
  const auto* rule = layer_registry().find(*site.node);
  if (rule == nullptr) {
    refuse_unsupported(
        site, std::string("its parameters feed ") + site.node->name() + ", which no layer rule reads");
  }
  auto layer = rule->build(*site.node, site);
  layer->name = site.label;
  layer->batch = site.batch;
  if (site.weight) layer->weight_name = join(mname, "weight");
  if (site.bias) layer->bias_name = join(mname, "bias");
  site.node->add_pre_hook(std::make_unique<CaptureHook>(layer->slot));
  return layer;
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
  for (const auto& [mname, m] : modules_of(model_)) {
    if (auto site = find_site(mname, *m, graph, ignored, batch_size))
      layers_.push_back(capture(*site, mname));
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

namespace {

// Per-layer squared norms with the fused CUDA kernel for the layers whose rule
// has a kernel form (one launch), ATen for the others; float32 rows.
std::vector<at::Tensor> fused_rows(const std::vector<std::unique_ptr<CapturedLayer>>& layers,
                                   NormStrategy strategy, int64_t batch) {
  at::AutoGradMode no_grad(false);
  std::vector<at::Tensor> rows(layers.size());
  std::vector<NormLayerOperands> ops;
  std::vector<size_t> fused;  // layer index of each operand set
  for (const auto k : c10::irange(layers.size())) {
    const auto& d = layers[k]->slot->d;
    TORCH_CHECK(d.is_cuda(),
                "per-sample gradients: backend fused_cuda needs the model on a CUDA device; layer '",
                layers[k]->name, "' is on ", d.device());
    if (auto op = layers[k]->fused_operands()) {
      op->strategy = strategy;
      ops.push_back(std::move(*op));
      fused.push_back(k);
    } else {
      rows[k] = layers[k]->sq_norms(strategy).to(at::kFloat);
    }
  }
  if (!ops.empty()) {
    auto norms = per_sample_sq_norms_cuda(ops, batch);
    for (const auto j : c10::irange(fused.size())) rows[fused[j]] = norms[static_cast<int64_t>(j)];
  }
  return rows;
}

}  // namespace

at::Tensor PerSampleGradients::layer_squared_norms() const {
  check_ready();
  bool fused = options_.backend == PerSampleBackend::fused_cuda;
  if (options_.backend == PerSampleBackend::automatic && fused_cuda_default(CudaKernel::per_sample_norms)) {
    fused = std::all_of(layers_.begin(), layers_.end(), [](const auto& l) { return l->slot->d.is_cuda(); });
  }
  std::vector<at::Tensor> rows;
  if (fused) {
    rows = fused_rows(layers_, options_.strategy, batch_size_);
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
    auto g = l->grads(all_samples(batch_size_, l->slot->d.device()));
    return (l->weight_name == parameter_name ? g.front() : g.back()) * scale();
  }
  TORCH_CHECK(false, "per-sample gradients: no captured layer holds parameter '", parameter_name, "'");
}

}  // namespace sgdx::ops

#include "sgdx/optim/rsgd.h"

#include <ATen/ops/zeros_like.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>

#include "sgdx/ops/rsgd_step.h"
#include "sgdx/optim/detail/param_groups.h"

namespace sgdx::optim {

RSGDOptions::RSGDOptions(double lr) : lr_(lr) {}

double RSGDOptions::reinforcement_probability(int64_t step) const {
  const double gamma_t = 1.0 - gamma0() * std::pow(gamma(), static_cast<double>(step));
  return std::clamp(std::min(max_prob(), gamma_t), 0.0, 1.0);
}

void RSGDOptions::validate() const {
  TORCH_CHECK(lr() >= 0, "RSGD: lr must be >= 0, got ", lr());
  TORCH_CHECK(gamma() > 0 && gamma() < 1, "RSGD: gamma must be in (0, 1), got ", gamma());
  TORCH_CHECK(gamma0() >= 0 && gamma0() <= 1, "RSGD: gamma0 must be in [0, 1], got ", gamma0());
  TORCH_CHECK(max_prob() >= 0 && max_prob() <= 1, "RSGD: max_prob must be in [0, 1], got ", max_prob());
  TORCH_CHECK(weight_decay() >= 0, "RSGD: weight_decay must be >= 0, got ", weight_decay());
  TORCH_CHECK(granularity() == RSGDGranularity::element || granularity() == RSGDGranularity::tensor,
              "RSGD: unknown granularity ", static_cast<int64_t>(granularity()));
  TORCH_CHECK(memory() == RSGDMemory::accumulated || memory() == RSGDMemory::previous,
              "RSGD: unknown memory mode ", static_cast<int64_t>(memory()));
}

void RSGDOptions::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void RSGDOptions::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "RSGDOptions");
  validate();
}

double RSGDOptions::get_lr() const {
  return lr();
}
void RSGDOptions::set_lr(const double lr) {
  this->lr(lr);
}

void RSGDParamState::serialize(torch::serialize::OutputArchive& archive) const {
  detail::write_fields(*this, archive);
}

void RSGDParamState::serialize(torch::serialize::InputArchive& archive) {
  detail::read_fields(*this, archive, "RSGDParamState");
}

RSGD::RSGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, const RSGDOptions& defaults)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{}, std::make_unique<RSGDOptions>(defaults)) {
  defaults.validate();
  for (const auto& g : param_groups) add_param_group(g);
}

RSGD::RSGD(std::vector<torch::Tensor> params, const RSGDOptions& defaults)
    : RSGD({torch::optim::OptimizerParamGroup(std::move(params))}, defaults) {}

void RSGD::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  detail::add_param_group_keeping_options<RSGDOptions>(*this, param_group, "RSGD");
}

torch::Tensor RSGD::step(LossClosure closure) {
  return step_scaled({}, {}, std::move(closure));
}

torch::Tensor RSGD::step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (detail::amp_begin_step(*this, grad_scale, found_inf, closure != nullptr, "RSGD", group()))
    return loss;  // skipped
  int64_t tensor_id = 0;
  for (const auto gi : c10::irange(param_groups_.size())) {
    auto& group = param_groups_[gi];
    const auto& options = detail::options_as<RSGDOptions>(group.options(), gi, "RSGD");
    ops::RSGDStepConfig config;
    config.lr = options.lr();
    config.weight_decay = options.weight_decay();
    config.seed = options.seed();
    config.per_element = options.granularity() == RSGDGranularity::element;
    config.memory_previous = options.memory() == RSGDMemory::previous;
    config.fused_cuda = options.fused_cuda();

    // One fused call per (device, dtype) bucket.
    struct Bucket {
      std::vector<torch::Tensor> params, grads, memory;
      std::vector<std::pair<torch::Tensor, torch::Tensor>> writeback;  // (param, contiguous copy)
      std::vector<int64_t> ids, steps;
      std::vector<double> probs;
    };
    detail::DeviceDtypeBuckets<Bucket> buckets;
    for (auto& p : group.params()) {
      const int64_t id = tensor_id++;
      if (!p.grad().defined()) continue;
      const auto& grad = p.grad();
      TORCH_CHECK(!grad.is_sparse(), "RSGD: sparse gradients are not supported");
      TORCH_CHECK(grad.scalar_type() == p.scalar_type(), "RSGD: gradient dtype ", grad.scalar_type(),
                  " differs from parameter dtype ", p.scalar_type());
      auto& slot = state_[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto st = std::make_unique<RSGDParamState>();
        st->memory(at::zeros_like(p, at::MemoryFormat::Contiguous));
        slot = std::move(st);
      }
      auto& st = static_cast<RSGDParamState&>(*slot);
      TORCH_CHECK(st.memory().sizes() == p.sizes(), "RSGD: state of parameter ", id, " has shape ",
                  st.memory().sizes(), " but the parameter has ", p.sizes());
      st.step(st.step() + 1);
      auto& b = buckets[p];
      if (p.is_contiguous()) {
        b.params.push_back(p);
      } else {
        b.params.push_back(p.contiguous());
        b.writeback.emplace_back(p, b.params.back());
      }
      b.grads.push_back(grad.contiguous());
      b.memory.push_back(st.memory());
      b.ids.push_back(id);
      b.steps.push_back(st.step());
      b.probs.push_back(options.reinforcement_probability(st.step()));
    }
    for (auto& [device, dtype, b] : buckets) {
      ops::rsgd_step_(b.params, b.grads, b.memory, b.ids, b.steps, b.probs, config);
      for (auto& [param, copy] : b.writeback) param.copy_(copy);
    }
  }
  return loss;
}

void RSGD::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<RSGDParamState, RSGDOptions>(archive, *this);
}

void RSGD::load(torch::serialize::InputArchive& archive) {
  std::vector<bool> fused;  // how this process computes: kept, not loaded
  for (const auto gi : c10::irange(param_groups_.size()))
    fused.push_back(detail::options_as<RSGDOptions>(param_groups_[gi].options(), gi, "RSGD").fused_cuda());
  detail::load_then_place<RSGDParamState, RSGDOptions>(*this, archive,
                                                       [](const torch::Tensor& p, RSGDParamState& st) {
                                                         detail::check_loaded_like(st.memory(), p, "RSGD");
                                                         st.memory(detail::to_device_of(st.memory(), p));
                                                       });
  for (const auto gi : c10::irange(std::min(fused.size(), param_groups_.size())))
    static_cast<RSGDOptions&>(param_groups_[gi].options()).fused_cuda(fused[gi]);
}

}  // namespace sgdx::optim

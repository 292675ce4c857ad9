// R-SGD as a composition of ATen ops, for any device (the default on CUDA until
// the fused kernel has been verified on a GPU). Written from the rule in
// sgdx/optim/rsgd.h, not from the kernels.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/detail/AcceleratorHooksInterface.h>
#include <c10/core/GradMode.h>
#include <c10/util/irange.h>

#include <mutex>

#include "sgdx/detail/philox.h"
#include "sgdx/ops/rsgd_step.h"

namespace sgdx::ops {
namespace detail {

uint64_t rsgd_aten_seed(uint64_t seed, uint32_t tensor_id, uint32_t step) {
  // Counter (tensor id, step, 0, "aten") keyed by the seed: an own stream, apart from the kernels'.
  const auto r = sgdx::detail::philox4x32_10(tensor_id, step, 0, 0x6e657461u, static_cast<uint32_t>(seed),
                                             static_cast<uint32_t>(seed >> 32));
  return (static_cast<uint64_t>(r.v[1]) << 32) | r.v[0];
}

namespace {
at::Generator fresh_generator(const c10::Device& device, uint64_t seed) {
  at::Generator gen;
  if (device.is_cpu()) {
    gen = at::detail::createCPUGenerator(seed);
  } else {
    gen = at::globalContext().getAcceleratorHooksInterface(device.type()).getNewGenerator(device.index());
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(seed);
  }
  return gen;
}
}  // namespace

at::Tensor rsgd_aten_draws(const at::Tensor& like, int64_t tensor_id, int64_t step, double prob,
                           const RSGDStepConfig& config, bool* all) {
  const uint64_t threshold = sgdx::detail::bernoulli_threshold(prob);
  const auto id = static_cast<uint32_t>(tensor_id);
  const auto t = static_cast<uint32_t>(step);
  if (threshold == 0 || threshold >= (uint64_t{1} << 32) || !config.per_element) {
    *all = sgdx::detail::rsgd_draw(config.seed, id, t, 0, threshold);
    return {};
  }
  auto gen = fresh_generator(like.device(), rsgd_aten_seed(config.seed, id, t));
  return at::empty(like.sizes(), like.options().dtype(at::kFloat)).bernoulli_(prob, gen).to(at::kBool);
}

}  // namespace detail

void rsgd_step_aten_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                     c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                     c10::ArrayRef<double> probs, const RSGDStepConfig& config) {
  detail::check_rsgd_inputs(params, grads, memory, tensor_ids, steps, probs);
  c10::AutoGradMode no_grad(false);
  for (const auto k : c10::irange(params.size())) {
    const auto& p = params[k];
    if (p.numel() == 0) continue;
    const auto opmath = at::promote_types(p.scalar_type(), at::kFloat);  // float32 for half/bfloat16
    const auto theta = p.to(opmath);
    auto g = grads[k].to(opmath);
    if (config.weight_decay != 0.0) g = g + config.weight_decay * theta;
    bool all = false;
    const auto xi = detail::rsgd_aten_draws(p, tensor_ids[k], steps[k], probs[k], config, &all);
    const auto with_memory = g + memory[k].to(opmath);
    const auto h = xi.defined() ? at::where(xi, with_memory, g) : (all ? with_memory : g);
    p.copy_(theta - config.lr * h);
    memory[k].copy_(config.memory_previous ? g : h);
  }
}

}  // namespace sgdx::ops

#include "sgdx/ops/rsgd_step.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <limits>

#include "sgdx/config.h"
#include "sgdx/detail/philox.h"

namespace sgdx::ops {
namespace detail {

c10::DeviceType check_rsgd_inputs(at::TensorList params, at::TensorList grads,
                                  at::TensorList memory, c10::ArrayRef<int64_t> tensor_ids,
                                  c10::ArrayRef<int64_t> steps, c10::ArrayRef<double> probs) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && memory.size() == n && tensor_ids.size() == n &&
                  steps.size() == n && probs.size() == n,
              "rsgd_step_: all lists must have the same length, got params=", n,
              " grads=", grads.size(), " memory=", memory.size(), " tensor_ids=",
              tensor_ids.size(), " steps=", steps.size(), " probs=", probs.size());
  if (n == 0) return c10::DeviceType::CPU;
  const auto device = params[0].device();
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype), "rsgd_step_: parameters must be floating point, got ",
              dtype);
  for (const auto k : c10::irange(n)) {
    const auto& p = params[k];
    const auto& g = grads[k];
    const auto& m = memory[k];
    TORCH_CHECK(p.defined() && g.defined() && m.defined(), "rsgd_step_: tensor ", k,
                " is undefined");
    TORCH_CHECK(p.layout() == at::kStrided && g.layout() == at::kStrided &&
                    m.layout() == at::kStrided,
                "rsgd_step_: tensor ", k, " is not dense (sparse gradients are not supported)");
    TORCH_CHECK(p.device() == device && g.device() == device && m.device() == device,
                "rsgd_step_: tensor ", k, " is not on ", device, " (param ", p.device(),
                ", grad ", g.device(), ", memory ", m.device(), ")");
    TORCH_CHECK(p.scalar_type() == dtype && g.scalar_type() == dtype && m.scalar_type() == dtype,
                "rsgd_step_: tensor ", k, " dtype mismatch: expected ", dtype, ", got param ",
                p.scalar_type(), ", grad ", g.scalar_type(), ", memory ", m.scalar_type());
    TORCH_CHECK(p.sizes() == g.sizes() && p.sizes() == m.sizes(), "rsgd_step_: tensor ", k,
                " shape mismatch: param ", p.sizes(), ", grad ", g.sizes(), ", memory ",
                m.sizes());
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && m.is_contiguous(),
                "rsgd_step_: tensor ", k, " must be contiguous");
    TORCH_CHECK(steps[k] >= 1 && steps[k] <= std::numeric_limits<uint32_t>::max(),
                "rsgd_step_: step must be in [1, 2^32), got ", steps[k]);
    TORCH_CHECK(tensor_ids[k] >= 0 && tensor_ids[k] <= std::numeric_limits<uint32_t>::max(),
                "rsgd_step_: tensor id must be in [0, 2^32), got ", tensor_ids[k]);
    TORCH_CHECK(probs[k] >= 0.0 && probs[k] <= 1.0,
                "rsgd_step_: probability must be in [0, 1], got ", probs[k]);
  }
  return device.type();
}

}  // namespace detail

namespace {

template <typename scalar_t>
void rsgd_tensor_cpu(scalar_t* p, const scalar_t* g, scalar_t* m, int64_t n, uint32_t tensor_id,
                     uint32_t step, uint64_t threshold, const RSGDStepConfig& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  const opmath_t lr = static_cast<opmath_t>(c.lr);
  const opmath_t wd = static_cast<opmath_t>(c.weight_decay);
  const bool has_wd = c.weight_decay != 0.0;
  const bool previous = c.memory_previous;
  // Deterministic cases draw nothing: Gamma = 0 is plain SGD, Gamma = 1 heavy ball.
  const bool random = threshold != 0 && threshold != (uint64_t{1} << 32);
  bool fixed_xi = threshold != 0;
  if (random && !c.per_element) {
    fixed_xi = sgdx::detail::rsgd_block(c.seed, tensor_id, step, 0).v[0] < threshold;
  }
  const bool per_element_random = random && c.per_element;

  auto update = [&](int64_t i, bool xi) {
    opmath_t gi = static_cast<opmath_t>(g[i]);
    if (has_wd) gi += wd * static_cast<opmath_t>(p[i]);
    const opmath_t h = xi ? gi + static_cast<opmath_t>(m[i]) : gi;
    p[i] = static_cast<scalar_t>(static_cast<opmath_t>(p[i]) - lr * h);
    m[i] = static_cast<scalar_t>(previous ? gi : h);
  };

  const int64_t blocks = (n + 3) / 4;
  at::parallel_for(0, blocks, 4096, [&](int64_t b0, int64_t b1) {
    if (per_element_random) {
      for (int64_t b = b0; b < b1; ++b) {
        const auto r = sgdx::detail::rsgd_block(c.seed, tensor_id, step, static_cast<uint64_t>(b));
        const int64_t i0 = b * 4;
        const int64_t len = std::min<int64_t>(4, n - i0);
        for (int64_t j = 0; j < len; ++j) update(i0 + j, r.v[j] < threshold);
      }
    } else {
      const int64_t end = std::min(n, b1 * 4);
      for (int64_t i = b0 * 4; i < end; ++i) update(i, fixed_xi);
    }
  });
}

}  // namespace

void rsgd_step_cpu_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                    c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                    c10::ArrayRef<double> probs, const RSGDStepConfig& config) {
  const auto device = detail::check_rsgd_inputs(params, grads, memory, tensor_ids, steps, probs);
  TORCH_CHECK(device == c10::DeviceType::CPU || params.empty(),
              "rsgd_step_cpu_: tensors must be on the CPU, got ", device);
  for (const auto k : c10::irange(params.size())) {
    const auto threshold = sgdx::detail::bernoulli_threshold(probs[k]);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, params[k].scalar_type(), "rsgd_step_cpu_", [&] {
          rsgd_tensor_cpu<scalar_t>(params[k].data_ptr<scalar_t>(),
                                    grads[k].const_data_ptr<scalar_t>(),
                                    memory[k].data_ptr<scalar_t>(), params[k].numel(),
                                    static_cast<uint32_t>(tensor_ids[k]),
                                    static_cast<uint32_t>(steps[k]), threshold, config);
        });
  }
}

void rsgd_step_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                c10::ArrayRef<double> probs, const RSGDStepConfig& config) {
  const auto device = detail::check_rsgd_inputs(params, grads, memory, tensor_ids, steps, probs);
  if (device == c10::DeviceType::CUDA) {
    rsgd_step_cuda_(params, grads, memory, tensor_ids, steps, probs, config);
  } else {
    TORCH_CHECK(device == c10::DeviceType::CPU, "rsgd_step_: unsupported device ", device);
    rsgd_step_cpu_(params, grads, memory, tensor_ids, steps, probs, config);
  }
}

#if !SGDX_WITH_CUDA
void rsgd_step_cuda_(at::TensorList, at::TensorList, at::TensorList, c10::ArrayRef<int64_t>,
                     c10::ArrayRef<int64_t>, c10::ArrayRef<double>, const RSGDStepConfig&) {
  TORCH_CHECK(false, "rsgd_step_cuda_: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
#endif

}  // namespace sgdx::ops

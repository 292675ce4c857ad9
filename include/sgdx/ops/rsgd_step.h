#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <vector>

namespace sgdx::ops {

/// Arguments shared by all tensors of one fused R-SGD step.
struct RSGDStepConfig {
  double lr = 0.0;
  double weight_decay = 0.0;
  uint64_t seed = 0;
  bool per_element = true;      ///< false: one draw per tensor
  bool memory_previous = false; ///< false: memory = h_{t-1}; true: memory = g_{t-1}
};

/// One R-SGD step on a list of tensors, in place:
///   g = grad + wd * p;  xi ~ Bernoulli(prob[k]);  h = g + xi * memory;
///   p -= lr * h;  memory = h (accumulated) or g (previous).
/// `steps[k]` (>= 1) and `tensor_ids[k]` select the counter-based random
/// stream (see sgdx/detail/philox.h); `probs[k]` is Gamma_t of tensor k.
/// Dispatches to the fused CUDA kernel for CUDA tensors, else the CPU path.
void rsgd_step_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                c10::ArrayRef<double> probs, const RSGDStepConfig& config);

/// The CPU reference path (also used for CPU tensors by rsgd_step_).
void rsgd_step_cpu_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                    c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                    c10::ArrayRef<double> probs, const RSGDStepConfig& config);

/// The fused multi-tensor CUDA kernel. Throws when sgdx was built without CUDA.
void rsgd_step_cuda_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                     c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                     c10::ArrayRef<double> probs, const RSGDStepConfig& config);

namespace detail {
/// Validation shared by both paths: equal list lengths, matching shapes,
/// dtypes and devices, dense and contiguous tensors. Returns the device type.
c10::DeviceType check_rsgd_inputs(at::TensorList params, at::TensorList grads,
                                  at::TensorList memory, c10::ArrayRef<int64_t> tensor_ids,
                                  c10::ArrayRef<int64_t> steps, c10::ArrayRef<double> probs);
}  // namespace detail

}  // namespace sgdx::ops

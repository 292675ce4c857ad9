#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include "sgdx/ops/cuda_kernels.h"

#include <cstdint>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::ops {

/// Arguments shared by all tensors of one fused R-SGD step.
struct RSGDStepConfig {
  double lr = 0.0;
  double weight_decay = 0.0;
  uint64_t seed = 0;
  bool per_element = true;       ///< false: one draw per tensor
  bool memory_previous = false;  ///< false: memory = h_{t-1}; true: memory = g_{t-1}
  /// CUDA tensors: the fused kernel (rsgd_step_cuda_) instead of the ATen
  /// composition (rsgd_step_aten_); defaults to what GPU runs verified (cuda_kernels.h).
  bool fused_cuda = fused_cuda_default(CudaKernel::rsgd_step);
};

/// One R-SGD step on a list of tensors, in place:
///   g = grad + wd * p;  xi ~ Bernoulli(prob[k]);  h = g + xi * memory;
///   p -= lr * h;  memory = h (accumulated) or g (previous).
/// `steps[k]` (>= 1) and `tensor_ids[k]` select the counter-based random
/// stream (see sgdx/detail/philox.h); `probs[k]` is Gamma_t of tensor k.
/// CPU tensors take the CPU kernel; CUDA tensors the fused kernel when
/// config.fused_cuda, else (and on any other device) the ATen composition.
SGDX_API void rsgd_step_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                         c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                         c10::ArrayRef<double> probs, const RSGDStepConfig& config);

/// The CPU reference path (also used for CPU tensors by rsgd_step_).
SGDX_API void rsgd_step_cpu_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                             c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                             c10::ArrayRef<double> probs, const RSGDStepConfig& config);

/// The device-generic composition of ATen ops, written from the rule above (the
/// default on CUDA until the fused kernel is verified there). Its per-element
/// draws come from a fresh ATen generator of the tensor's device, seeded from
/// (seed, tensor id, step) through Philox — never torch's global generator — so
/// a resumed run draws the same; they are not the CPU kernel's stream. One draw
/// per tensor (granularity tensor) is the CPU kernel's draw exactly.
SGDX_API void rsgd_step_aten_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                              c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                              c10::ArrayRef<double> probs, const RSGDStepConfig& config);

/// The fused multi-tensor CUDA kernel (the CPU kernel's draws and values bit for bit). Throws when sgdx was
/// built without CUDA.
SGDX_API void rsgd_step_cuda_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                              c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                              c10::ArrayRef<double> probs, const RSGDStepConfig& config);

namespace detail {
/// The per-element Bernoulli(prob) draws of the ATen path for a tensor shaped
/// like `like` (bool, on its device); undefined when every draw is the same
/// (`all` tells which): prob 0 or 1, or tensor granularity.
SGDX_API at::Tensor rsgd_aten_draws(const at::Tensor& like, int64_t tensor_id, int64_t step, double prob,
                                    const RSGDStepConfig& config, bool* all);
/// The 64-bit generator seed of (seed, tensor id, step) for the ATen path.
SGDX_API uint64_t rsgd_aten_seed(uint64_t seed, uint32_t tensor_id, uint32_t step);
/// Validation shared by both paths: equal list lengths, matching shapes,
/// dtypes and devices, dense and contiguous tensors. Returns the device type.
SGDX_API c10::DeviceType check_rsgd_inputs(at::TensorList params, at::TensorList grads, at::TensorList memory,
                                           c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                                           c10::ArrayRef<double> probs);
}  // namespace detail

}  // namespace sgdx::ops

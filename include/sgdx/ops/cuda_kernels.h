#pragma once
// Which CUDA paths run by default. Every CUDA operation has a device-generic
// ATen composition (the path CI runs on CPU tensors); a fused kernel becomes
// the default only after a committed GPU run verified the exact sources it was
// built from (cuda/verified_kernels.txt, written from scripts/gpu_check.sh's
// results). The switch lives in one table (src/ops/cuda_kernels.cpp); a kernel
// switched on whose sources changed since its verification falls back to the
// ATen path and fails the CI test that pins the defaults.
#include <array>
#include <string_view>

#include "sgdx/export.h"

namespace sgdx::ops {

enum class CudaKernel {
  rsgd_step,                ///< ops::rsgd_step_cuda_
  gradqueue_step,           ///< ops::gradqueue_step_cuda_
  gradqueue_cluster_stats,  ///< ops::gradqueue_cluster_stats_cuda
  kmeans,                   ///< ops::kmeans_cuda
  per_sample_norms,         ///< ops::per_sample_sq_norms_cuda
};

struct CudaKernelRecord {
  CudaKernel kernel;
  std::string_view name;
  /// SHA-256 over the kernel's sources as compiled into this build ("" without CUDA).
  std::string_view source_hash;
  /// The source hash a committed GPU run verified ("" if none).
  std::string_view verified_hash;
  /// The one switch: the fused kernel is wanted as the default on CUDA.
  bool fused_by_default;
};

inline constexpr int kCudaKernelCount = 5;
SGDX_API const std::array<CudaKernelRecord, kCudaKernelCount>& cuda_kernel_records();
SGDX_API const CudaKernelRecord& cuda_kernel_record(CudaKernel kernel);

/// True when the fused kernel is the default on CUDA: switched on, and these
/// sources are the verified ones.
SGDX_API bool fused_cuda_default(CudaKernel kernel);

}  // namespace sgdx::ops

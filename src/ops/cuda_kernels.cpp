#include "sgdx/ops/cuda_kernels.h"

#include <c10/util/Exception.h>

#include "sgdx/kernel_hashes.h"

namespace sgdx::ops {

// Flip a kernel's last field to true only together with a verified hash in
// cuda/verified_kernels.txt from a GPU run whose tests passed (docs/cuda.md).
const std::array<CudaKernelRecord, kCudaKernelCount>& cuda_kernel_records() {
  static const std::array<CudaKernelRecord, kCudaKernelCount> records{{
      {CudaKernel::rsgd_step, "rsgd_step", SGDX_SOURCE_HASH_rsgd_step, SGDX_VERIFIED_HASH_rsgd_step, false},
      {CudaKernel::gradqueue_step, "gradqueue_step", SGDX_SOURCE_HASH_gradqueue_step,
       SGDX_VERIFIED_HASH_gradqueue_step, false},
      {CudaKernel::gradqueue_cluster_stats, "gradqueue_cluster_stats",
       SGDX_SOURCE_HASH_gradqueue_cluster_stats, SGDX_VERIFIED_HASH_gradqueue_cluster_stats, false},
      {CudaKernel::kmeans, "kmeans", SGDX_SOURCE_HASH_kmeans, SGDX_VERIFIED_HASH_kmeans, false},
      {CudaKernel::per_sample_norms, "per_sample_norms", SGDX_SOURCE_HASH_per_sample_norms,
       SGDX_VERIFIED_HASH_per_sample_norms, false},
  }};
  return records;
}

const CudaKernelRecord& cuda_kernel_record(CudaKernel kernel) {
  for (const auto& r : cuda_kernel_records())
    if (r.kernel == kernel) return r;
  TORCH_CHECK(false, "cuda_kernel_record: unknown kernel ", static_cast<int>(kernel));
}

bool fused_cuda_default(CudaKernel kernel) {
  const auto& r = cuda_kernel_record(kernel);
  return r.fused_by_default && !r.source_hash.empty() && r.source_hash == r.verified_hash;
}

}  // namespace sgdx::ops

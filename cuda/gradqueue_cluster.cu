// The clustered GradQueue step's per-cluster statistics on CUDA
// (sgdx/ops/gradqueue_step.h: gradqueue_cluster_stats_cuda). Launch 1: one block
// per 4096-element chunk of a tensor computes, in float64, the chunk's
// sum max(s2/n, 0) and for every cluster k sum (G_k * inv_k + wd p - mu)^2 (mu = S1,
// S2 = M2 or the variance: sgdx/detail/gradqueue_math.h)
// (the chunk's p, S1, S2 stay in L1 across the K rows). Launch 2: one thread per
// (tensor, k) adds the chunk partials in chunk order, so the result is
// deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/irange.h>

#include "kernel_util.cuh"
#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;

struct ClusterDesc {
  const void* sums;  // [K, numel]
  const void* p;     // nullptr without weight decay
  const void* s1;
  const void* s2;
  int64_t numel;
  int64_t chunk_base;  // first chunk of this tensor
  int64_t chunks;
  double inv_n, wd;
  bool mean_double;  // s1 is float64 (exact storage: ops::gradqueue_mean_dtype)
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    cluster_partials_kernel(const ClusterDesc* __restrict__ descs, int tensors, int K,
                            const double* __restrict__ inv, double* __restrict__ partials) {
  __shared__ double red[kThreads / 32];
  __shared__ ClusterDesc D;
  const int64_t chunk = blockIdx.x;
  if (threadIdx.x == 0)
    D = descs[sgdx::cuda::find_descriptor(descs, tensors, chunk, &ClusterDesc::chunk_base)];
  __syncthreads();
  const int64_t begin = (chunk - D.chunk_base) * kChunk, end = min(D.numel, begin + kChunk);
  using stat_t = at::opmath_type<scalar_t>;  // the window statistics' dtype (gradqueue_stats_dtype)
  const auto* s1f = static_cast<const stat_t*>(D.s1);
  const auto* s1d = static_cast<const double*>(D.s1);
  auto mean = [&](int64_t e) { return D.mean_double ? s1d[e] : static_cast<double>(s1f[e]); };
  const auto* s2 = static_cast<const stat_t*>(D.s2);
  const auto* p = static_cast<const scalar_t*>(D.p);
  const auto* g = static_cast<const scalar_t*>(D.sums);
  double* out = partials + chunk * (K + 1);
  double var = 0.0;
  for (int64_t e = begin + threadIdx.x; e < end; e += kThreads) {
    var += fmax(static_cast<double>(s2[e]) * D.inv_n, 0.0);
  }
  var = sgdx::cuda::block_sum<kThreads>(var, red);
  if (threadIdx.x == 0) out[K] = var;
  for (int k = 0; k < K; ++k) {
    const double ik = inv[k];
    const scalar_t* gk = g + static_cast<int64_t>(k) * D.numel;
    double acc = 0.0;
    for (int64_t e = begin + threadIdx.x; e < end; e += kThreads) {
      double v = static_cast<double>(gk[e]) * ik - mean(e);
      if (p != nullptr) v += D.wd * static_cast<double>(p[e]);
      acc += v * v;
    }
    acc = sgdx::cuda::block_sum<kThreads>(acc, red);
    if (threadIdx.x == 0) out[k] = acc;
  }
}

__global__ void cluster_reduce_kernel(const ClusterDesc* __restrict__ descs, int tensors, int K,
                                      const double* __restrict__ partials, double* __restrict__ out) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= static_cast<int64_t>(tensors) * (K + 1)) return;
  const int t = static_cast<int>(id / (K + 1)), k = static_cast<int>(id % (K + 1));
  const ClusterDesc D = descs[t];
  double s = 0.0;
  for (int64_t c = 0; c < D.chunks; ++c) s += partials[(D.chunk_base + c) * (K + 1) + k];
  out[id] = s;
}

}  // namespace

at::Tensor gradqueue_cluster_stats_cuda(const std::vector<GradQueueClusterTensor>& tensors,
                                        const at::Tensor& inv_size) {
  detail::check_cluster_stats(tensors, inv_size, /*cuda=*/true);
  const int64_t K = inv_size.numel();
  const int T = static_cast<int>(tensors.size());
  if (T == 0) return at::zeros({0, K + 1}, inv_size.options());
  const auto device = tensors[0].s1.device();
  const c10::cuda::CUDAGuard guard(device);
  const auto dtype = tensors[0].sums.scalar_type();
  std::vector<at::Tensor> keep;
  std::vector<ClusterDesc> descs;
  int64_t chunks = 0;
  for (const auto& x : tensors) {
    ClusterDesc d{};
    auto sums = x.sums.contiguous(), s1 = x.s1.contiguous(), s2 = x.s2.contiguous();
    keep.insert(keep.end(), {sums, s1, s2});
    d.sums = sums.data_ptr();
    d.s1 = s1.data_ptr();
    d.s2 = s2.data_ptr();
    if (x.weight_decay != 0.0) {
      auto p = x.param.contiguous();
      keep.push_back(p);
      d.p = p.data_ptr();
    }
    d.numel = s1.numel();
    d.chunk_base = chunks;
    d.chunks = (d.numel + kChunk - 1) / kChunk;
    d.inv_n = x.inv_n;
    d.mean_double = s1.scalar_type() == at::kDouble;
    d.wd = x.weight_decay;
    chunks += d.chunks;
    descs.push_back(d);
  }
  auto out = at::zeros({T, K + 1}, inv_size.options().device(device));
  if (chunks == 0) return out;  // every tensor empty: zero deviations and variances
  TORCH_CHECK(chunks < (int64_t{1} << 31), "gradqueue_cluster_stats_cuda: ", chunks,
              " chunks exceed one launch");
  auto dev_descs = sgdx::cuda::upload_descriptors(descs, device);
  const auto* dp = reinterpret_cast<const ClusterDesc*>(dev_descs.data_ptr());
  auto inv = inv_size.to(device).contiguous();
  auto partials = at::empty({chunks, K + 1}, out.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "gradqueue_cluster_stats_cuda", [&] {
    cluster_partials_kernel<scalar_t><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(
        dp, T, static_cast<int>(K), inv.data_ptr<double>(), partials.data_ptr<double>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t outputs = int64_t{T} * (K + 1);
  cluster_reduce_kernel<<<static_cast<unsigned>((outputs + 255) / 256), 256, 0, stream>>>(
      dp, T, static_cast<int>(K), partials.data_ptr<double>(), out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace sgdx::ops

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/irange.h>

#include "multi_tensor_apply.cuh"
#include "sgdx/detail/philox.h"
#include "sgdx/detail/rsgd_math.h"
#include "sgdx/ops/rsgd_step.h"

namespace sgdx::ops {
namespace {

struct RSGDTensorArgs {
  uint64_t threshold;  // 0: never reinforce, 2^32: always
  uint32_t tensor_id;
  uint32_t step;
};

template <typename scalar_t>
struct alignas(4 * sizeof(scalar_t)) Vec4 {
  scalar_t v[4];
};

template <typename scalar_t>
__global__ void __launch_bounds__(sgdx::cuda::kBlockSize)
    rsgd_kernel(sgdx::cuda::TensorListMeta<3, RSGDTensorArgs> meta, double lr_d, double wd_d, uint64_t seed,
                bool per_element, bool previous) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int t = meta.block_to_tensor[blockIdx.x];
  const int64_t chunk = meta.block_to_chunk[blockIdx.x];
  const int64_t n = meta.numel[t];
  const RSGDTensorArgs a = meta.extra[t];
  auto* p = static_cast<scalar_t*>(meta.addresses[0][t]);
  const auto* g = static_cast<const scalar_t*>(meta.addresses[1][t]);
  auto* m = static_cast<scalar_t*>(meta.addresses[2][t]);
  const opmath_t lr = static_cast<opmath_t>(lr_d);
  const opmath_t wd = static_cast<opmath_t>(wd_d);
  const bool random = per_element && a.threshold != 0 && a.threshold != (uint64_t{1} << 32);
  const bool fixed_xi = a.threshold != 0;
  const bool aligned = (reinterpret_cast<uintptr_t>(p) % sizeof(Vec4<scalar_t>) == 0) &&
                       (reinterpret_cast<uintptr_t>(g) % sizeof(Vec4<scalar_t>) == 0) &&
                       (reinterpret_cast<uintptr_t>(m) % sizeof(Vec4<scalar_t>) == 0);

  // Each thread owns 16 consecutive elements: one Philox call gives their high
  // bytes (sgdx/detail/philox.h); four 4-wide loads and stores move the data.
  const int64_t begin = chunk * sgdx::cuda::kChunkSize;
  const int64_t end = min(n, begin + sgdx::cuda::kChunkSize);
  for (int64_t i0 = begin + 16 * static_cast<int64_t>(threadIdx.x); i0 < end;
       i0 += 16 * static_cast<int64_t>(blockDim.x)) {
    sgdx::detail::Philox4x32 high{};
    if (random)
      high = sgdx::detail::rsgd_high_block(seed, a.tensor_id, a.step, static_cast<uint64_t>(i0 / 16));
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t i = i0 + 4 * q;
      if (i >= end) break;
      bool xi[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        xi[j] = random
                    ? sgdx::detail::rsgd_resolve(sgdx::detail::rsgd_high_byte(high, 4 * q + j), a.threshold,
                                                 seed, a.tensor_id, a.step, static_cast<uint64_t>(i + j))
                    : fixed_xi;
      }
      if (aligned && i + 4 <= end) {
        Vec4<scalar_t> pv = *reinterpret_cast<const Vec4<scalar_t>*>(p + i);
        const Vec4<scalar_t> gv = *reinterpret_cast<const Vec4<scalar_t>*>(g + i);
        Vec4<scalar_t> mv = *reinterpret_cast<const Vec4<scalar_t>*>(m + i);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          opmath_t pj = pv.v[j], mj = mv.v[j];
          sgdx::detail::rsgd_update<opmath_t>(pj, static_cast<opmath_t>(gv.v[j]), mj, xi[j], lr, wd,
                                              previous);
          pv.v[j] = static_cast<scalar_t>(pj);
          mv.v[j] = static_cast<scalar_t>(mj);
        }
        *reinterpret_cast<Vec4<scalar_t>*>(p + i) = pv;
        *reinterpret_cast<Vec4<scalar_t>*>(m + i) = mv;
      } else {
        for (int j = 0; j < 4 && i + j < end; ++j) {
          opmath_t pj = p[i + j], mj = m[i + j];
          sgdx::detail::rsgd_update<opmath_t>(pj, static_cast<opmath_t>(g[i + j]), mj, xi[j], lr, wd,
                                              previous);
          p[i + j] = static_cast<scalar_t>(pj);
          m[i + j] = static_cast<scalar_t>(mj);
        }
      }
    }
  }
}

}  // namespace

void rsgd_step_cuda_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                     c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                     c10::ArrayRef<double> probs, const RSGDStepConfig& config) {
  const auto device = detail::check_rsgd_inputs(params, grads, memory, tensor_ids, steps, probs);
  if (params.empty()) return;
  TORCH_CHECK(device == c10::DeviceType::CUDA, "rsgd_step_cuda_: tensors must be on CUDA, got ", device);
  const c10::cuda::CUDAGuard guard(params[0].device());
  std::vector<std::vector<void*>> lists(3);
  std::vector<int64_t> numels;
  std::vector<RSGDTensorArgs> extras;
  for (const auto k : c10::irange(params.size())) {
    lists[0].push_back(params[k].data_ptr());
    lists[1].push_back(const_cast<void*>(grads[k].const_data_ptr()));
    lists[2].push_back(memory[k].data_ptr());
    numels.push_back(params[k].numel());
    RSGDTensorArgs a{sgdx::detail::bernoulli_threshold(probs[k]), static_cast<uint32_t>(tensor_ids[k]),
                     static_cast<uint32_t>(steps[k])};
    if (!config.per_element && a.threshold != 0 && a.threshold != (uint64_t{1} << 32)) {
      const bool xi = sgdx::detail::rsgd_draw(config.seed, a.tensor_id, a.step, 0, a.threshold);
      a.threshold = xi ? (uint64_t{1} << 32) : 0;
    }
    extras.push_back(a);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "rsgd_step_cuda_", [&] {
    sgdx::cuda::multi_tensor_apply<3>(lists, numels, extras, rsgd_kernel<scalar_t>, config.lr,
                                      config.weight_decay, config.seed, config.per_element,
                                      config.memory_previous);
  });
}

}  // namespace sgdx::ops

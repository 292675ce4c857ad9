// The fused multi-tensor GradQueue-SGDM step on CUDA (sgdx/ops/gradqueue_step.h):
// the same rule as the CPU kernel, one pass per element (a moments pass first
// for tensor granularity), mixed-precision friendly (opmath in float32 or wider,
// grad_scale divides the gradients, a nonzero found_inf skips every write).
// Reductions are deterministic: per-chunk partials, reduced per tensor in order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/irange.h>

#include "kernel_util.cuh"
#include "multi_tensor_apply.cuh"
#include "sgdx/detail/gradqueue_math.h"
#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops {
namespace {

using sgdx::detail::MomentumMode;

constexpr int kLists = 7;  // p, g, v, s1, s2, slot, old
constexpr int kGQTensors = 24;
constexpr int kGQBlocks = 160;

enum class OldRow : int { none = 0, separate = 1, in_slot = 2 };

struct GQArgs {
  double inv_var;   // the variance is s2 * inv_var: 1/n of the window (exact storage), 1 for ema
  double inv_push;  // exact storage: 1/n of the window after the push
  double rate;      // ema storage: the running-moment rate; 0 for exact
  bool stats, first, exact;
  OldRow old;
  int chunk_offset;  // this tensor's first chunk in the partial buffers
  int tensor;        // index into the per-tensor rho array
};

template <int L>
using Meta = sgdx::cuda::TensorListMeta<L, GQArgs, kGQTensors, kGQBlocks>;

// Scalars in double: float64 tensors compute with them unrounded, the others round once to opmath.
struct Common {
  double lr, wd, mom, damp1, eps, inv_zref, rho_min, rho_max, kappa;
  bool nesterov, per_element;
};

__device__ __forceinline__ bool skip(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.f;
}
__device__ __forceinline__ float inv_scale_of(const float* grad_scale) {
  return grad_scale != nullptr ? 1.f / *grad_scale : 1.f;
}

// The tensor, its scalars and the element range of this block.
struct BlockWork {
  int t, chunk;
  GQArgs a;
  int64_t begin, end;
};
__device__ __forceinline__ BlockWork block_work(const Meta<kLists>& meta) {
  BlockWork w;
  w.t = meta.block_to_tensor[blockIdx.x];
  w.chunk = meta.block_to_chunk[blockIdx.x];
  w.a = meta.extra[w.t];
  w.begin = static_cast<int64_t>(w.chunk) * sgdx::cuda::kChunkSize;
  w.end = min(meta.numel[w.t], w.begin + sgdx::cuda::kChunkSize);
  return w;
}
template <typename T>
__device__ __forceinline__ T* list(const Meta<kLists>& meta, int l, int t) {
  return static_cast<T*>(meta.addresses[l][t]);
}

// Tensor granularity: this block's sums of (d - mu)^2 and sigma^2; M is the mean's type
// (double for exact storage: ops::gradqueue_mean_dtype).
template <typename scalar_t, typename M>
__device__ __forceinline__ void moments_range(const Meta<kLists>& meta, const BlockWork& w, const Common& c,
                                              const float* grad_scale, double& dev, double& var) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int t = w.t;
  const auto* p = list<const scalar_t>(meta, 0, t);
  const auto* g = list<const scalar_t>(meta, 1, t);
  const auto* s1 = list<const M>(meta, 3, t);
  const auto* s2 = list<const opmath_t>(meta, 4, t);
  const opmath_t inv_scale = inv_scale_of(grad_scale), wd = static_cast<opmath_t>(c.wd);
  const opmath_t inv_var = static_cast<opmath_t>(w.a.inv_var);
  for (int64_t i = w.begin + threadIdx.x; i < w.end; i += blockDim.x) {
    const opmath_t d = static_cast<opmath_t>(g[i]) * inv_scale + wd * static_cast<opmath_t>(p[i]);
    const opmath_t dm = static_cast<opmath_t>(static_cast<M>(d) - s1[i]);
    const opmath_t v = s2[i] * inv_var;
    dev += static_cast<double>(dm * dm);
    var += static_cast<double>(v > opmath_t(0) ? v : opmath_t(0));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(sgdx::cuda::kBlockSize)
    gq_moments_kernel(Meta<kLists> meta, Common c, double* partial, const float* grad_scale,
                      const float* found_inf) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (skip(found_inf)) return;
  __shared__ double sh[sgdx::cuda::kBlockSize / 32];
  const BlockWork w = block_work(meta);
  double dev = 0.0, var = 0.0;
  if (w.a.exact)
    moments_range<scalar_t, double>(meta, w, c, grad_scale, dev, var);
  else
    moments_range<scalar_t, opmath_t>(meta, w, c, grad_scale, dev, var);
  const double sd = sgdx::cuda::block_sum<sgdx::cuda::kBlockSize>(dev, sh);
  const double sv = sgdx::cuda::block_sum<sgdx::cuda::kBlockSize>(var, sh);
  if (threadIdx.x == 0) {
    partial[2 * (w.a.chunk_offset + w.chunk)] = sd;
    partial[2 * (w.a.chunk_offset + w.chunk) + 1] = sv;
  }
}

// One block per tensor: its chunks' partials, in order, to Delta-rho.
__global__ void gq_rho_kernel(const double* partial, const int* first_chunk, const int* chunks,
                              const int* stats, Common c, double* rho, const float* found_inf) {
  if (skip(found_inf)) return;
  __shared__ double sh[sgdx::cuda::kBlockSize / 32];
  const int t = blockIdx.x;
  double dev = 0.0, var = 0.0;
  for (int k = threadIdx.x; k < chunks[t]; k += blockDim.x) {
    dev += partial[2 * (first_chunk[t] + k)];
    var += partial[2 * (first_chunk[t] + k) + 1];
  }
  const double sd = sgdx::cuda::block_sum<sgdx::cuda::kBlockSize>(dev, sh);
  const double sv = sgdx::cuda::block_sum<sgdx::cuda::kBlockSize>(var, sh);
  if (threadIdx.x == 0)
    rho[t] = stats[t] ? sgdx::detail::tensor_rho(sd, sv, c.eps, c.kappa, c.rho_min, c.rho_max) : 1.0;
}

// The update of this block's elements; returns their sum of Delta-rho. M: the mean's type.
// No __restrict__: the leaving row may be the slot being written.
template <typename scalar_t, typename M>
__device__ __forceinline__ double update_range(const Meta<kLists>& meta, const BlockWork& w, const Common& c,
                                               const double* rho_tensor, const float* grad_scale) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int t = w.t;
  const GQArgs& a = w.a;
  auto* p = list<scalar_t>(meta, 0, t);
  const auto* g = list<const scalar_t>(meta, 1, t);
  auto* v = list<scalar_t>(meta, 2, t);
  auto* s1 = list<M>(meta, 3, t);
  auto* s2 = list<opmath_t>(meta, 4, t);
  auto* slot = list<opmath_t>(meta, 5, t);
  const auto* old = list<const opmath_t>(meta, 6, t);
  const opmath_t inv_scale = inv_scale_of(grad_scale), wd = static_cast<opmath_t>(c.wd);
  const opmath_t lr = static_cast<opmath_t>(c.lr), mom = static_cast<opmath_t>(c.mom);
  const opmath_t damp1 = static_cast<opmath_t>(c.damp1), inv_var = static_cast<opmath_t>(a.inv_var);
  const M inv_push = static_cast<M>(a.inv_push);
  const opmath_t rate = static_cast<opmath_t>(a.rate), eps = static_cast<opmath_t>(c.eps);
  const opmath_t inv_zref = static_cast<opmath_t>(c.inv_zref), rmin = static_cast<opmath_t>(c.rho_min);
  const opmath_t rmax = static_cast<opmath_t>(c.rho_max), kappa = static_cast<opmath_t>(c.kappa);
  const bool kappa1 = c.kappa == 1.0;
  const opmath_t rho_fixed =
      (!c.per_element && a.stats) ? static_cast<opmath_t>(rho_tensor[a.tensor]) : opmath_t(1);
  double rho_sum = 0.0;
  for (int64_t i = w.begin + threadIdx.x; i < w.end; i += blockDim.x) {
    const opmath_t pi = static_cast<opmath_t>(p[i]);
    const opmath_t d = static_cast<opmath_t>(g[i]) * inv_scale + wd * pi;
    M mu = s1[i];
    opmath_t m2 = s2[i];
    opmath_t rho = rho_fixed;
    if (c.per_element && a.stats) {
      const opmath_t dev = static_cast<opmath_t>(static_cast<M>(d) - mu);
      rho = kappa1 ? sgdx::detail::element_rho<opmath_t, true>(dev, m2 * inv_var, eps, inv_zref, kappa, rmin,
                                                               rmax)
                   : sgdx::detail::element_rho<opmath_t, false>(dev, m2 * inv_var, eps, inv_zref, kappa, rmin,
                                                                rmax);
    }
    rho_sum += static_cast<double>(rho);
    const opmath_t gh = rho * d;
    if (a.exact) {
      opmath_t o = 0;
      if (a.old == OldRow::separate) o = old[i];
      if (a.old == OldRow::in_slot) o = slot[i];
      sgdx::detail::window_push<opmath_t, M>(mu, m2, d, o, a.old != OldRow::none, inv_push);
      slot[i] = d;
    } else {
      opmath_t mf = static_cast<opmath_t>(mu);
      sgdx::detail::ema_push(mf, m2, d, rate);
      mu = static_cast<M>(mf);
    }
    s1[i] = mu;
    s2[i] = m2;
    opmath_t u = gh;
    if (c.mom != 0.0) {
      opmath_t vi = static_cast<opmath_t>(v[i]);
      u = c.nesterov ? sgdx::detail::momentum_direction<opmath_t, MomentumMode::nesterov>(vi, gh, mom, damp1,
                                                                                          a.first)
                     : sgdx::detail::momentum_direction<opmath_t, MomentumMode::heavy_ball>(vi, gh, mom,
                                                                                            damp1, a.first);
      v[i] = static_cast<scalar_t>(vi);
    }
    p[i] = static_cast<scalar_t>(pi - lr * u);
  }
  return rho_sum;
}

template <typename scalar_t>
__global__ void __launch_bounds__(sgdx::cuda::kBlockSize)
    gq_update_kernel(Meta<kLists> meta, Common c, const double* rho_tensor, double* rho_partial,
                     const float* grad_scale, const float* found_inf) {
  using opmath_t = at::opmath_type<scalar_t>;
  if (skip(found_inf)) return;
  __shared__ double sh[sgdx::cuda::kBlockSize / 32];
  const BlockWork w = block_work(meta);
  const double rho_sum = w.a.exact ? update_range<scalar_t, double>(meta, w, c, rho_tensor, grad_scale)
                                   : update_range<scalar_t, opmath_t>(meta, w, c, rho_tensor, grad_scale);
  const double s = sgdx::cuda::block_sum<sgdx::cuda::kBlockSize>(rho_sum, sh);
  if (threadIdx.x == 0) rho_partial[w.a.chunk_offset + w.chunk] = s;
}

}  // namespace

at::Tensor gradqueue_step_cuda_(std::vector<GradQueueTensor>& tensors, const GradQueueStepConfig& config,
                                const at::Tensor& grad_scale, const at::Tensor& found_inf) {
  detail::check_gradqueue_list(tensors, config, grad_scale, found_inf, /*cuda=*/true);
  const int64_t T = static_cast<int64_t>(tensors.size());
  if (T == 0) return at::empty({0}, at::TensorOptions().dtype(at::kDouble));
  const auto& p0 = tensors[0].param;
  const c10::cuda::CUDAGuard guard(p0.device());
  std::vector<std::vector<void*>> lists(kLists);
  std::vector<int64_t> numels;
  std::vector<GQArgs> extras;
  std::vector<int> first_chunk, chunks, stats;
  int total_chunks = 0;
  for (const auto k : c10::irange(T)) {
    auto& t = tensors[k];
    const bool exact = t.ema_rate == 0.0;
    OldRow old = OldRow::none;
    if (exact && t.old.defined())
      old = t.old.const_data_ptr() == t.slot.const_data_ptr() ? OldRow::in_slot : OldRow::separate;
    lists[0].push_back(t.param.data_ptr());
    lists[1].push_back(const_cast<void*>(t.grad.const_data_ptr()));
    lists[2].push_back(t.momentum.defined() ? t.momentum.data_ptr() : nullptr);
    lists[3].push_back(t.s1.data_ptr());
    lists[4].push_back(t.s2.data_ptr());
    lists[5].push_back(exact ? t.slot.data_ptr() : nullptr);
    lists[6].push_back(old == OldRow::separate ? const_cast<void*>(t.old.const_data_ptr()) : nullptr);
    const int64_t n = t.param.numel();
    numels.push_back(n);
    const int c = static_cast<int>((n + sgdx::cuda::kChunkSize - 1) / sgdx::cuda::kChunkSize);
    GQArgs a;
    a.inv_var = exact ? 1.0 / static_cast<double>(std::max<int64_t>(t.count, 1)) : 1.0;
    a.inv_push = 1.0 / static_cast<double>(old != OldRow::none ? t.count : t.count + 1);
    a.rate = t.ema_rate;
    a.stats = t.scarcity;
    a.first = t.first_step;
    a.exact = exact;
    a.old = old;
    a.chunk_offset = total_chunks;
    a.tensor = static_cast<int>(k);
    extras.push_back(a);
    first_chunk.push_back(total_chunks);
    chunks.push_back(c);
    stats.push_back(t.scarcity ? 1 : 0);
    total_chunks += c;
  }
  Common c;
  c.lr = config.lr;
  c.wd = config.weight_decay;
  c.mom = config.momentum;
  c.damp1 = 1.0 - config.dampening;
  c.eps = config.eps;
  c.inv_zref = 1.0 / kGradQueueZRef;
  c.rho_min = config.rho_min;
  c.rho_max = config.rho_max;
  c.kappa = config.kappa;
  c.nesterov = config.nesterov;
  c.per_element = config.per_element;
  const auto dev = p0.device();
  auto dopt = at::TensorOptions().dtype(at::kDouble).device(dev);
  auto iopt = at::TensorOptions().dtype(at::kInt);
  auto rho_partial = at::zeros({std::max(total_chunks, 1)}, dopt);
  auto rho = at::ones({T}, dopt);
  const float* gs = grad_scale.defined() ? grad_scale.const_data_ptr<float>() : nullptr;
  const float* fi = found_inf.defined() ? found_inf.const_data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p0.scalar_type(), "gradqueue_step_cuda_", [&] {
    if (!config.per_element) {
      auto partial = at::zeros({2 * std::max(total_chunks, 1)}, dopt);
      sgdx::cuda::multi_tensor_apply<kLists, GQArgs, kGQTensors, kGQBlocks>(
          lists, numels, extras, gq_moments_kernel<scalar_t>, c, partial.data_ptr<double>(), gs, fi);
      // Pinned and non-blocking: no host synchronisation.
      auto up = [&](const std::vector<int>& v) {
        return at::tensor(v, iopt).pin_memory().to(dev, /*non_blocking=*/true);
      };
      auto fc = up(first_chunk), ch = up(chunks), st = up(stats);
      gq_rho_kernel<<<T, sgdx::cuda::kBlockSize, 0, at::cuda::getCurrentCUDAStream()>>>(
          partial.const_data_ptr<double>(), fc.const_data_ptr<int>(), ch.const_data_ptr<int>(),
          st.const_data_ptr<int>(), c, rho.data_ptr<double>(), fi);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    sgdx::cuda::multi_tensor_apply<kLists, GQArgs, kGQTensors, kGQBlocks>(
        lists, numels, extras, gq_update_kernel<scalar_t>, c, rho.const_data_ptr<double>(),
        rho_partial.data_ptr<double>(), gs, fi);
  });
  // Per-tensor sums of Delta-rho, in chunk order (deterministic).
  std::vector<at::Tensor> sums;
  for (const auto k : c10::irange(T)) sums.push_back(rho_partial.narrow(0, first_chunk[k], chunks[k]).sum());
  return at::stack(sums);
}

}  // namespace sgdx::ops

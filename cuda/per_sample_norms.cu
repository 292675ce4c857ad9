// Fused per-sample squared gradient norms for many Linear / Conv2d layers in one
// launch (sgdx/ops/per_sample_cuda.h). Work items, each one CUDA block, by the
// layer's NormRule (chosen on the host by detail::norm_rule, as on the CPU):
//   outer_product  (Linear, one position)  one item per sample: ||a||^2 ||d||^2 (+ ||d||^2)
//   ghost          32x32 tiles (t, s >= t) of <a_t,a_s> and <d_t,d_s>
//                  per sample and group, off-diagonal tiles twice
//   materialize    32x32 tiles (o, k) of the per-sample gradient
//                  sum_t d_t[o] a_t[k], squared
//   bias item      ||sum_t d_t||^2 (every rule but outer_product; bias_only has only it)
// Each item writes its float64 partial; the last item of a (layer, sample) to
// finish (an atomic counter after a fence, as in CUDA's threadFenceReduction
// sample) sums that sample's partials in item order, so results are
// deterministic. Conv2d inputs are read through an implicit im2col.
//
// Precision: products and each 32-long run of a dot product in float32 (at most
// 32 roundings, relative error <= 2e-6 whatever K, P or T), everything after
// that in float64: the Gram entries and per-sample gradient entries across
// chunks, their products and squares, the tile, block and per-sample sums. Only
// the final per-sample value is rounded to float32.
//
// Aliasing: partials and counters are written by one block and read by another
// (the last to finish), so they are ordinary pointers, never __restrict__ or
// read through the read-only cache; the descriptor table and the operands are
// read-only for the whole launch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/irange.h>

#include <map>

#include "kernel_util.cuh"
#include "sgdx/ops/per_sample_cuda.h"

namespace sgdx::ops {
namespace {

using detail::NormRule;

constexpr int kTile = 32;      // output tile edge and reduction chunk
constexpr int kThreads = 256;  // 16 x 16 threads, 2 x 2 outputs each

struct LayerDesc {
  const void* a;
  const void* d;
  float* out;         // row of this layer in the [layers, B] result
  int64_t item_base;  // first work item of this layer
  int per_b;          // work items per sample
  NormRule rule;
  bool
      bias;  // ghost / materialize: the last item of each sample is the bias item; outer_product: add ||d||^2
  bool weight;
  bool conv;
  int T, K, P, G;  // positions per sample, inputs per group, outputs per group, groups
  int tiles_per_group;
  int nt0, nt1;  // tile grid: ghost nt x nt (upper triangle), materialise P-tiles x K-tiles
  int Cin, H, W, Wo, kh, kw, sh, sw, ph, pw, dh, dw;
  int counter_base;  // this layer's first counter (layer * B)
};

template <typename T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

// Input of position t, feature k of sample b, group g (k < K, t < T).
template <typename T>
__device__ __forceinline__ float a_at(const LayerDesc& L, int b, int g, int t, int k) {
  const T* a = static_cast<const T*>(L.a);
  if (!L.conv) return ld(a, (static_cast<int64_t>(b) * L.T + t) * L.K + k);
  const int khw = L.kh * L.kw;
  const int c = g * (L.K / khw) + k / khw;
  const int r = k % khw, i = r / L.kw, j = r % L.kw;
  const int oh = t / L.Wo, ow = t % L.Wo;
  const int ih = oh * L.sh - L.ph + i * L.dh, iw = ow * L.sw - L.pw + j * L.dw;
  if (ih < 0 || ih >= L.H || iw < 0 || iw >= L.W) return 0.f;
  return ld(a, ((static_cast<int64_t>(b) * L.Cin + c) * L.H + ih) * L.W + iw);
}

// Output gradient of position t, output o of sample b, group g (o < P, t < T).
template <typename T>
__device__ __forceinline__ float d_at(const LayerDesc& L, int b, int g, int t, int o) {
  const T* d = static_cast<const T*>(L.d);
  if (!L.conv) return ld(d, (static_cast<int64_t>(b) * L.T + t) * L.P + o);
  return ld(d, (static_cast<int64_t>(b) * L.P * L.G + g * L.P + o) * L.T + t);
}

// acc[i][j] += sum_c x[ty + 16 i][c] * y[tx + 16 j][c]: this thread's 2 x 2 share of
// a 32 x 32 tile, one 32-wide chunk summed in float and added to the float64 total.
__device__ __forceinline__ void tile_fma(const float (*x)[kTile + 1], const float (*y)[kTile + 1],
                                         double (&acc)[2][2]) {
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float part[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll 8
  for (int c = 0; c < kTile; ++c) {
    const float x0 = x[ty][c], x1 = x[ty + 16][c], y0 = y[tx][c], y1 = y[tx + 16][c];
    part[0][0] += x0 * y0;
    part[0][1] += x0 * y1;
    part[1][0] += x1 * y0;
    part[1][1] += x1 * y1;
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) acc[i][j] += static_cast<double>(part[i][j]);
  }
}

// One Gram tile of the ghost rule: acc[i][j] += <x_{t0+ty+16i}, x_{s0+tx+16j}> over
// the inputs (PASS 0, width K) or the output gradients (PASS 1, width P).
template <typename T, int PASS>
__device__ __forceinline__ void gram_tile(const LayerDesc& L, int b, int g, int t0, int s0,
                                          float (*sx)[kTile + 1], float (*sy)[kTile + 1],
                                          double (&acc)[2][2]) {
  const int width = PASS == 0 ? L.K : L.P;
  for (int c0 = 0; c0 < width; c0 += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      // Linear rows are contiguous in the feature, Conv2d ones in the position.
      const int r = L.conv ? e % kTile : e / kTile, c = L.conv ? e / kTile : e % kTile;
      const int f = c0 + c;
      float x = 0.f, y = 0.f;
      if (f < width) {
        if (t0 + r < L.T) x = PASS == 0 ? a_at<T>(L, b, g, t0 + r, f) : d_at<T>(L, b, g, t0 + r, f);
        if (s0 + r < L.T) y = PASS == 0 ? a_at<T>(L, b, g, s0 + r, f) : d_at<T>(L, b, g, s0 + r, f);
      }
      sx[r][c] = x;
      sy[r][c] = y;
    }
    __syncthreads();
    tile_fma(sx, sy, acc);
    __syncthreads();
  }
}

// Ghost tile (ti, si): this thread's share of sum over the tile of <a_t, a_s> <d_t, d_s>
// (off-diagonal tiles count twice: the sum over all pairs is symmetric).
template <typename T>
__device__ double ghost_tile(const LayerDesc& L, int b, int g, int ti, int si, float (*sx)[kTile + 1],
                             float (*sy)[kTile + 1]) {
  double aa[2][2] = {{0.0, 0.0}, {0.0, 0.0}}, dd[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
  gram_tile<T, 0>(L, b, g, ti * kTile, si * kTile, sx, sy, aa);
  gram_tile<T, 1>(L, b, g, ti * kTile, si * kTile, sx, sy, dd);
  const double v = aa[0][0] * dd[0][0] + aa[0][1] * dd[0][1] + aa[1][0] * dd[1][0] + aa[1][1] * dd[1][1];
  return ti < si ? 2.0 * v : v;
}

// Materialised tile (po, ko): sum over the tile of (sum_t d_t[o] a_t[k])^2.
template <typename T>
__device__ double grad_tile(const LayerDesc& L, int b, int g, int po, int ko, float (*sd)[kTile + 1],
                            float (*sa)[kTile + 1]) {
  const int o0 = po * kTile, k0 = ko * kTile;
  double acc[2][2] = {{0.0, 0.0}, {0.0, 0.0}};
  for (int c0 = 0; c0 < L.T; c0 += kTile) {
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      // Linear: contiguous in o / k (the row); Conv2d: in the position (the column).
      const int r = L.conv ? e / kTile : e % kTile, c = L.conv ? e % kTile : e / kTile;
      const int t = c0 + c;
      float x = 0.f, y = 0.f;
      if (t < L.T) {
        if (o0 + r < L.P) x = d_at<T>(L, b, g, t, o0 + r);
        if (k0 + r < L.K) y = a_at<T>(L, b, g, t, k0 + r);
      }
      sd[r][c] = x;
      sa[r][c] = y;
    }
    __syncthreads();
    tile_fma(sd, sa, acc);
    __syncthreads();
  }
  return acc[0][0] * acc[0][0] + acc[0][1] * acc[0][1] + acc[1][0] * acc[1][0] + acc[1][1] * acc[1][1];
}

// ||sum_t d_t||^2 over all outputs (every group) of sample b, summed in float64.
template <typename T>
__device__ double bias_item(const LayerDesc& L, int b) {
  const int outputs = L.P * L.G;
  double acc = 0.0;
  if (!L.conv) {
    for (int o = threadIdx.x; o < outputs; o += kThreads) {
      double s = 0.0;
      for (int t = 0; t < L.T; ++t) s += d_at<T>(L, b, 0, t, o);
      acc += s * s;
    }
  } else {
    const T* d = static_cast<const T*>(L.d);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int o = warp; o < outputs; o += kThreads / 32) {
      const int64_t row = (static_cast<int64_t>(b) * outputs + o) * L.T;
      double s = 0.0;
      for (int t = lane; t < L.T; t += 32) s += ld(d, row + t);
      for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) acc += s * s;
    }
  }
  return acc;  // per thread; summed by the caller
}

// One position per sample: ||a_b||^2 ||d_b||^2 (+ ||d_b||^2 for the bias), in thread 0
// (the other threads return 0: only thread 0's block sums are valid).
template <typename T>
__device__ double outer_item(const LayerDesc& L, int b, double* red) {
  const T* a = static_cast<const T*>(L.a);
  const T* d = static_cast<const T*>(L.d);
  double sa = 0.0, sd = 0.0;
  if (L.weight) {
    for (int k = threadIdx.x; k < L.K; k += kThreads) {
      const double x = ld(a, static_cast<int64_t>(b) * L.K + k);
      sa += x * x;
    }
  }
  for (int o = threadIdx.x; o < L.P; o += kThreads) {
    const double x = ld(d, static_cast<int64_t>(b) * L.P + o);
    sd += x * x;
  }
  sa = sgdx::cuda::block_sum<kThreads>(sa, red);
  sd = sgdx::cuda::block_sum<kThreads>(sd, red);
  return threadIdx.x == 0 ? sa * sd + (L.bias ? sd : 0.0) : 0.0;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    per_sample_norms_kernel(const LayerDesc* __restrict__ descs, int layers, int batch, double* partials,
                            unsigned* counters) {
  __shared__ float s0[kTile][kTile + 1], s1[kTile][kTile + 1];
  __shared__ double red[kThreads / 32];
  __shared__ LayerDesc L;
  __shared__ bool last;
  const int64_t item = blockIdx.x;
  if (threadIdx.x == 0) L = descs[sgdx::cuda::find_descriptor(descs, layers, item, &LayerDesc::item_base)];
  __syncthreads();
  const int64_t local = item - L.item_base;
  const int b = static_cast<int>(local / L.per_b), j = static_cast<int>(local % L.per_b);
  double mine = 0.0;  // this thread's share of the item's value
  if (L.rule == NormRule::outer_product) {
    mine = outer_item<T>(L, b, red);
  } else if (L.rule == NormRule::bias_only || (L.bias && j == L.per_b - 1)) {
    mine = bias_item<T>(L, b);
  } else {
    const int g = j / L.tiles_per_group, tile = j % L.tiles_per_group;
    if (L.rule == NormRule::ghost) {
      int ti = 0, rest = tile;
      while (rest >= L.nt0 - ti) rest -= L.nt0 - ti++;
      mine = ghost_tile<T>(L, b, g, ti, ti + rest, s0, s1);
    } else {
      mine = grad_tile<T>(L, b, g, tile / L.nt1, tile % L.nt1, s0, s1);
    }
  }
  const double total = sgdx::cuda::block_sum<kThreads>(mine, red);
  if (threadIdx.x == 0) {
    partials[item] = total;
    __threadfence();
    const unsigned done = atomicAdd(&counters[L.counter_base + b], 1u);
    last = done + 1 == static_cast<unsigned>(L.per_b);
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    __threadfence();
    // volatile: the other blocks' partials, read from L2 (never a stale L1 or read-only-cache line).
    const volatile double* p = partials + L.item_base + static_cast<int64_t>(b) * L.per_b;
    double s = 0.0;
    for (int k = 0; k < L.per_b; ++k) s += p[k];
    L.out[b] = static_cast<float>(s);
  }
}

int ceil_div(int64_t a, int64_t b) {
  return static_cast<int>((a + b - 1) / b);
}

// The shape fields of layer `op`'s descriptor (d, a: its contiguous operands).
void describe_shape(const NormLayerOperands& op, const at::Tensor& d, const at::Tensor& a, int64_t batch,
                    LayerDesc& L) {
  if (L.conv) {
    L.G = static_cast<int>(op.groups);
    L.T = static_cast<int>(d.size(2) * d.size(3));
    L.P = static_cast<int>(d.size(1) / op.groups);
    L.Wo = static_cast<int>(d.size(3));
    if (a.defined()) {
      L.Cin = static_cast<int>(a.size(1));
      L.H = static_cast<int>(a.size(2));
      L.W = static_cast<int>(a.size(3));
      L.K = static_cast<int>(a.size(1) / op.groups * op.kernel_h * op.kernel_w);
    }
    L.kh = static_cast<int>(op.kernel_h);
    L.kw = static_cast<int>(op.kernel_w);
    L.sh = static_cast<int>(op.stride_h);
    L.sw = static_cast<int>(op.stride_w);
    L.ph = static_cast<int>(op.pad_h);
    L.pw = static_cast<int>(op.pad_w);
    L.dh = static_cast<int>(op.dilation_h);
    L.dw = static_cast<int>(op.dilation_w);
  } else {
    L.G = 1;
    const int64_t rows = d.dim() == 3 ? d.size(0) * d.size(1) : d.size(0);
    L.T = static_cast<int>(rows / batch);
    L.P = static_cast<int>(d.size(-1));
    L.K = a.defined() ? static_cast<int>(a.size(-1)) : 0;
  }
}

// The work items of one layer per sample: the rule's tiles per group, plus the bias item.
void describe_items(int64_t l, LayerDesc& L) {
  if (L.rule == NormRule::outer_product || L.rule == NormRule::bias_only) {
    L.per_b = 1;
    return;
  }
  int64_t tiles;
  if (L.rule == NormRule::ghost) {
    L.nt0 = L.nt1 = ceil_div(L.T, kTile);
    tiles = int64_t{L.nt0} * (L.nt0 + 1) / 2;
  } else {
    L.nt0 = ceil_div(L.P, kTile);
    L.nt1 = ceil_div(L.K, kTile);
    tiles = int64_t{L.nt0} * L.nt1;
  }
  const int64_t per_b = int64_t{L.G} * tiles + (L.bias ? 1 : 0);
  TORCH_CHECK(per_b < (int64_t{1} << 30), "per_sample_sq_norms_cuda: layer ", l, " needs ", per_b,
              " tiles per sample, too many for the kernel");
  L.tiles_per_group = static_cast<int>(tiles);
  L.per_b = static_cast<int>(per_b);
}

// One kernel launch over the layers of one dtype (`items` work items in all).
void launch(at::ScalarType dtype, const std::vector<LayerDesc>& descs, int64_t items, int64_t batch,
            const at::Device& device, const at::Tensor& counters) {
  if (items == 0) return;
  TORCH_CHECK(items < (int64_t{1} << 31), "per_sample_sq_norms_cuda: ", items,
              " work items exceed one launch");
  auto stream = at::cuda::getCurrentCUDAStream();
  auto dev_descs = sgdx::cuda::upload_descriptors(descs, device);
  auto partials = at::empty({items}, at::TensorOptions().device(device).dtype(at::kDouble));
  const auto* dp = reinterpret_cast<const LayerDesc*>(dev_descs.data_ptr());
  const int n = static_cast<int>(descs.size());
  const int B = static_cast<int>(batch);
  auto* cnt = reinterpret_cast<unsigned*>(counters.data_ptr<int>());
  switch (dtype) {
    case at::kFloat:
      per_sample_norms_kernel<float>
          <<<static_cast<unsigned>(items), kThreads, 0, stream>>>(dp, n, B, partials.data_ptr<double>(), cnt);
      break;
    case at::kHalf:
      per_sample_norms_kernel<c10::Half>
          <<<static_cast<unsigned>(items), kThreads, 0, stream>>>(dp, n, B, partials.data_ptr<double>(), cnt);
      break;
    case at::kBFloat16:
      per_sample_norms_kernel<c10::BFloat16>
          <<<static_cast<unsigned>(items), kThreads, 0, stream>>>(dp, n, B, partials.data_ptr<double>(), cnt);
      break;
    default:
      TORCH_CHECK(false, "per_sample_sq_norms_cuda: unsupported dtype ", dtype);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // `partials` and `dev_descs` go back to the caching allocator on this stream:
  // later work on the stream is ordered after the kernel.
}

}  // namespace

at::Tensor per_sample_sq_norms_cuda(const std::vector<NormLayerOperands>& layers, int64_t batch) {
  detail::check_norm_layers(layers, batch, /*cuda=*/true);
  // No layer: no operand names a device; the result goes to the current CUDA device.
  const auto device =
      layers.empty() ? at::Device(at::kCUDA, c10::cuda::current_device()) : layers[0].grad_output.device();
  const c10::cuda::CUDAGuard guard(device);
  const auto fopt = at::TensorOptions().device(device).dtype(at::kFloat);
  const int64_t nl = static_cast<int64_t>(layers.size());
  // Zeros: a layer without work items (no positions, inputs or outputs) has norm 0.
  auto out = at::zeros({nl, batch}, fopt);
  if (nl == 0 || batch == 0) return out;
  auto counters = at::zeros({nl * batch}, at::TensorOptions().device(device).dtype(at::kInt));
  std::vector<at::Tensor> keep;  // contiguous operands, alive until the launch is queued
  std::map<at::ScalarType, std::vector<LayerDesc>> by_dtype;
  std::map<at::ScalarType, int64_t> items_of;
  for (const auto l : c10::irange(nl)) {
    const auto& op = layers[l];
    // Contiguous, possibly at an odd element offset: the kernel loads scalars only.
    auto d = op.grad_output.contiguous();
    auto a = op.weight ? op.input.contiguous() : at::Tensor();
    keep.push_back(d);
    if (a.defined()) keep.push_back(a);
    LayerDesc L{};
    L.a = a.defined() ? a.data_ptr() : nullptr;
    L.d = d.data_ptr();
    L.out = out.data_ptr<float>() + l * batch;
    L.rule = detail::norm_rule(op, batch);
    L.bias = op.bias;
    L.weight = op.weight;
    L.conv = op.kind == NormLayerOperands::Kind::conv2d;
    L.counter_base = static_cast<int>(l * batch);
    describe_shape(op, d, a, batch, L);
    describe_items(l, L);
    auto& items = items_of[d.scalar_type()];
    L.item_base = items;
    items += int64_t{L.per_b} * batch;
    by_dtype[d.scalar_type()].push_back(L);
  }
  for (auto& [dtype, descs] : by_dtype) launch(dtype, descs, items_of[dtype], batch, device, counters);
  return out;
}

}  // namespace sgdx::ops

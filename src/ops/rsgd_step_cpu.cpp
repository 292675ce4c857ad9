#include "sgdx/ops/rsgd_step.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "../cpu/isa_targets.h"
#include "../cpu/philox_simd.h"
#include "sgdx/config.h"
#include "sgdx/cpu_isa.h"
#include "sgdx/detail/philox.h"
#include "sgdx/detail/rsgd_math.h"

// at::parallel_for expands `#pragma omp parallel` here: without -fopenmp
// (CMakeLists.txt) the kernel would silently run on one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile this file with -fopenmp: LibTorch is an OpenMP build"
#endif

namespace sgdx::ops {
namespace detail {

c10::DeviceType check_rsgd_inputs(at::TensorList params, at::TensorList grads, at::TensorList memory,
                                  c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                                  c10::ArrayRef<double> probs) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && memory.size() == n && tensor_ids.size() == n && steps.size() == n &&
                  probs.size() == n,
              "rsgd_step_: all lists must have the same length, got params=", n, " grads=", grads.size(),
              " memory=", memory.size(), " tensor_ids=", tensor_ids.size(), " steps=", steps.size(),
              " probs=", probs.size());
  if (n == 0) return c10::DeviceType::CPU;
  const auto device = params[0].device();
  const auto dtype = params[0].scalar_type();
  TORCH_CHECK(at::isFloatingType(dtype), "rsgd_step_: parameters must be floating point, got ", dtype);
  for (const auto k : c10::irange(n)) {
    const auto& p = params[k];
    const auto& g = grads[k];
    const auto& m = memory[k];
    TORCH_CHECK(p.defined() && g.defined() && m.defined(), "rsgd_step_: tensor ", k, " is undefined");
    TORCH_CHECK(p.layout() == at::kStrided && g.layout() == at::kStrided && m.layout() == at::kStrided,
                "rsgd_step_: tensor ", k, " is not dense (sparse gradients are not supported)");
    TORCH_CHECK(p.device() == device && g.device() == device && m.device() == device, "rsgd_step_: tensor ",
                k, " is not on ", device, " (param ", p.device(), ", grad ", g.device(), ", memory ",
                m.device(), ")");
    TORCH_CHECK(p.scalar_type() == dtype && g.scalar_type() == dtype && m.scalar_type() == dtype,
                "rsgd_step_: tensor ", k, " dtype mismatch: expected ", dtype, ", got param ",
                p.scalar_type(), ", grad ", g.scalar_type(), ", memory ", m.scalar_type());
    TORCH_CHECK(p.sizes() == g.sizes() && p.sizes() == m.sizes(), "rsgd_step_: tensor ", k,
                " shape mismatch: param ", p.sizes(), ", grad ", g.sizes(), ", memory ", m.sizes());
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && m.is_contiguous(), "rsgd_step_: tensor ", k,
                " must be contiguous");
    TORCH_CHECK(steps[k] >= 1 && steps[k] <= std::numeric_limits<uint32_t>::max(),
                "rsgd_step_: step must be in [1, 2^32), got ", steps[k]);
    TORCH_CHECK(tensor_ids[k] >= 0 && tensor_ids[k] <= std::numeric_limits<uint32_t>::max(),
                "rsgd_step_: tensor id must be in [0, 2^32), got ", tensor_ids[k]);
    TORCH_CHECK(probs[k] >= 0.0 && probs[k] <= 1.0, "rsgd_step_: probability must be in [0, 1], got ",
                probs[k]);
  }
  return device.type();
}

}  // namespace detail

namespace {

// Tiles of kTile elements: first the tile's Bernoulli words (Philox is
// compute-bound: vectorised across blocks), then one vectorisable pass over
// p, g, m. The tile loop is instantiated once per x86 variant
// (sgdx/cpu_isa.h), each with its own Philox; all give the same bits.
constexpr int64_t kTile = 1024;

// The high words of a tile's blocks (rsgd_high_block): one variant's Philox.
using HighWordsFn = void (*)(uint64_t seed, uint32_t tensor_id, uint32_t step, uint64_t first, int64_t blocks,
                             uint32_t* out);

// xi for the elements [i0, i0 + len) of a tile (i0 a multiple of 16): the
// high bytes come 16 per Philox call, and the rare elements whose high byte
// equals the threshold's are resolved with their low bits.
template <HighWordsFn kHighWords>
SGDX_ALWAYS_INLINE void fill_draws(uint64_t seed, uint32_t tensor_id, uint32_t step, int64_t i0, int64_t len,
                                   uint64_t threshold, uint32_t* __restrict xi) {
  alignas(64) uint8_t high[kTile];
  const int64_t blocks = (len + 15) / 16;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  // In memory, the bytes of v[0..3] are already in the documented order.
  kHighWords(seed, tensor_id, step, static_cast<uint64_t>(i0 / 16), blocks,
             reinterpret_cast<uint32_t*>(high));
#else
  for (int64_t b = 0; b < blocks; ++b) {
    const auto r = sgdx::detail::rsgd_high_block(seed, tensor_id, step, static_cast<uint64_t>(i0 / 16 + b));
    for (int j = 0; j < 16; ++j) high[16 * b + j] = static_cast<uint8_t>(sgdx::detail::rsgd_high_byte(r, j));
  }
#endif
  const auto t_high = static_cast<uint8_t>(threshold >> 24);
  for (int64_t j = 0; j < len; ++j) xi[j] = high[j] < t_high;
  for (const void* hit = std::memchr(high, t_high, static_cast<size_t>(len)); hit != nullptr;) {
    const int64_t j = static_cast<const uint8_t*>(hit) - high;
    xi[j] =
        sgdx::detail::rsgd_resolve(t_high, threshold, seed, tensor_id, step, static_cast<uint64_t>(i0 + j));
    hit = j + 1 < len ? std::memchr(high + j + 1, t_high, static_cast<size_t>(len - j - 1)) : nullptr;
  }
}

// xi == nullptr: the same fixed_xi for every element. Two loops, so that
// neither loads xi conditionally (only AVX-512 has masked loads to vectorise
// that); the selects inside vectorise because the file is compiled with
// -fno-trapping-math (CMakeLists.txt).
template <typename scalar_t, typename opmath_t = at::opmath_type<scalar_t>>
SGDX_ALWAYS_INLINE void update_tile(scalar_t* __restrict p, const scalar_t* __restrict g,
                                    scalar_t* __restrict m, const uint32_t* __restrict xi, int64_t len,
                                    bool fixed_xi, opmath_t lr, opmath_t wd, bool previous) {
  auto element = [&](int64_t i, bool reinforce) {
    opmath_t pi = static_cast<opmath_t>(p[i]), mi = static_cast<opmath_t>(m[i]);
    sgdx::detail::rsgd_update<opmath_t>(pi, static_cast<opmath_t>(g[i]), mi, reinforce, lr, wd, previous);
    p[i] = static_cast<scalar_t>(pi);
    m[i] = static_cast<scalar_t>(mi);
  };
  if (xi != nullptr) {
    for (int64_t i = 0; i < len; ++i) element(i, xi[i] != 0);
  } else {
    for (int64_t i = 0; i < len; ++i) element(i, fixed_xi);
  }
}

// Per-tensor constants of one step.
struct TensorPlan {
  int64_t numel = 0;
  int64_t first_tile = 0;  // index of the tensor's first tile among all tiles
  uint64_t threshold = 0;
  uint32_t tensor_id = 0, step = 0;
  bool draw = false;      // per-element draws needed
  bool fixed_xi = false;  // otherwise: the same xi for every element
};

TensorPlan plan_tensor(int64_t numel, uint32_t tensor_id, uint32_t step, uint64_t threshold,
                       const RSGDStepConfig& c) {
  TensorPlan t;
  t.numel = numel;
  t.tensor_id = tensor_id;
  t.step = step;
  t.threshold = threshold;
  // Deterministic cases draw nothing: Gamma = 0 is plain SGD, Gamma = 1 heavy ball.
  const bool random = threshold != 0 && threshold != (uint64_t{1} << 32);
  t.fixed_xi = threshold != 0;
  if (random && !c.per_element) t.fixed_xi = sgdx::detail::rsgd_draw(c.seed, tensor_id, step, 0, threshold);
  t.draw = random && c.per_element;
  return t;
}

template <typename scalar_t>
struct TileJob {
  const std::vector<scalar_t*>& p;
  const std::vector<const scalar_t*>& g;
  const std::vector<scalar_t*>& m;
  const std::vector<TensorPlan>& plans;
  const RSGDStepConfig& c;
};

// One tile's update, a separate function per variant: its own __restrict
// pointers are what let the compiler vectorise the loop (inlined into the tile
// loop, the pointers come from vectors and the loop stays scalar).
template <typename scalar_t>
using UpdateFn = void (*)(scalar_t* __restrict p, const scalar_t* __restrict g, scalar_t* __restrict m,
                          const uint32_t* __restrict xi, int64_t len, bool fixed_xi,
                          at::opmath_type<scalar_t> lr, at::opmath_type<scalar_t> wd, bool previous);

template <typename scalar_t>
SGDX_NOINLINE void update_baseline(scalar_t* __restrict p, const scalar_t* __restrict g,
                                   scalar_t* __restrict m, const uint32_t* __restrict xi, int64_t len,
                                   bool fixed_xi, at::opmath_type<scalar_t> lr, at::opmath_type<scalar_t> wd,
                                   bool previous) {
  update_tile<scalar_t>(p, g, m, xi, len, fixed_xi, lr, wd, previous);
}
#if SGDX_X86_VARIANTS
template <typename scalar_t>
SGDX_TARGET_AVX2 SGDX_NOINLINE void update_avx2(scalar_t* __restrict p, const scalar_t* __restrict g,
                                                scalar_t* __restrict m, const uint32_t* __restrict xi,
                                                int64_t len, bool fixed_xi, at::opmath_type<scalar_t> lr,
                                                at::opmath_type<scalar_t> wd, bool previous) {
  update_tile<scalar_t>(p, g, m, xi, len, fixed_xi, lr, wd, previous);
}
template <typename scalar_t>
SGDX_TARGET_AVX512 SGDX_NOINLINE void update_avx512(scalar_t* __restrict p, const scalar_t* __restrict g,
                                                    scalar_t* __restrict m, const uint32_t* __restrict xi,
                                                    int64_t len, bool fixed_xi, at::opmath_type<scalar_t> lr,
                                                    at::opmath_type<scalar_t> wd, bool previous) {
  update_tile<scalar_t>(p, g, m, xi, len, fixed_xi, lr, wd, previous);
}
#endif

// Tiles [t0, t1) of all tensors: the body every variant compiles.
template <typename scalar_t, HighWordsFn kHighWords, UpdateFn<scalar_t> kUpdate>
SGDX_ALWAYS_INLINE void run_tiles(const TileJob<scalar_t>& job, int64_t t0, int64_t t1) {
  using opmath_t = at::opmath_type<scalar_t>;
  alignas(64) uint32_t xi[kTile];  // 32-bit lanes like float: the select vectorises
  const auto& plans = job.plans;
  // The tensor holding tile t0, then walk forward.
  auto k = static_cast<size_t>(
      std::upper_bound(plans.begin(), plans.end(), t0,
                       [](int64_t tile, const TensorPlan& pl) { return tile < pl.first_tile; }) -
      plans.begin() - 1);
  const auto lr = static_cast<opmath_t>(job.c.lr), wd = static_cast<opmath_t>(job.c.weight_decay);
  for (int64_t t = t0; t < t1; ++t) {
    while (t >= plans[k].first_tile + (plans[k].numel + kTile - 1) / kTile) ++k;
    const TensorPlan& pl = plans[k];
    const int64_t i0 = (t - pl.first_tile) * kTile;
    if (!pl.draw) {  // no draws: this range's tiles of the tensor in one pass
      const int64_t last = std::min(t1, pl.first_tile + (pl.numel + kTile - 1) / kTile);
      const int64_t len = std::min((last - t) * kTile, pl.numel - i0);
      kUpdate(job.p[k] + i0, job.g[k] + i0, job.m[k] + i0, nullptr, len, pl.fixed_xi, lr, wd,
              job.c.memory_previous);
      t = last - 1;
      continue;
    }
    const int64_t len = std::min(kTile, pl.numel - i0);
    fill_draws<kHighWords>(job.c.seed, pl.tensor_id, pl.step, i0, len, pl.threshold, xi);
    kUpdate(job.p[k] + i0, job.g[k] + i0, job.m[k] + i0, xi, len, pl.fixed_xi, lr, wd, job.c.memory_previous);
  }
}

template <typename scalar_t>
void tiles_baseline(const TileJob<scalar_t>& job, int64_t t0, int64_t t1) {
  run_tiles<scalar_t, sgdx::cpu::rsgd_high_words_scalar, update_baseline<scalar_t>>(job, t0, t1);
}
#if SGDX_X86_VARIANTS
template <typename scalar_t>
SGDX_TARGET_AVX2 void tiles_avx2(const TileJob<scalar_t>& job, int64_t t0, int64_t t1) {
  run_tiles<scalar_t, sgdx::cpu::rsgd_high_words_avx2, update_avx2<scalar_t>>(job, t0, t1);
}
template <typename scalar_t>
SGDX_TARGET_AVX512 void tiles_avx512(const TileJob<scalar_t>& job, int64_t t0, int64_t t1) {
  run_tiles<scalar_t, sgdx::cpu::rsgd_high_words_avx512, update_avx512<scalar_t>>(job, t0, t1);
}
#endif

template <typename scalar_t>
auto tiles_for(sgdx::CpuIsa isa) {
#if SGDX_X86_VARIANTS
  if (isa == sgdx::CpuIsa::Avx512) return &tiles_avx512<scalar_t>;
  if (isa == sgdx::CpuIsa::Avx2) return &tiles_avx2<scalar_t>;
#endif
  (void)isa;
  return &tiles_baseline<scalar_t>;
}

// All tiles of all tensors in one parallel region (one fork/join per step).
template <typename scalar_t>
void rsgd_tensors_cpu(const TileJob<scalar_t>& job, int64_t total_tiles) {
  const auto tiles = tiles_for<scalar_t>(sgdx::cpu_isa());
  at::parallel_for(0, total_tiles, 16, [&](int64_t t0, int64_t t1) { tiles(job, t0, t1); });
}

}  // namespace

void rsgd_step_cpu_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                    c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps,
                    c10::ArrayRef<double> probs, const RSGDStepConfig& config) {
  const auto device = detail::check_rsgd_inputs(params, grads, memory, tensor_ids, steps, probs);
  if (params.empty()) return;
  TORCH_CHECK(device == c10::DeviceType::CPU, "rsgd_step_cpu_: tensors must be on the CPU, got ", device);
  std::vector<TensorPlan> plans;
  int64_t total_tiles = 0;
  for (const auto k : c10::irange(params.size())) {
    if (params[k].numel() == 0) continue;
    auto pl =
        plan_tensor(params[k].numel(), static_cast<uint32_t>(tensor_ids[k]), static_cast<uint32_t>(steps[k]),
                    sgdx::detail::bernoulli_threshold(probs[k]), config);
    pl.first_tile = total_tiles;
    total_tiles += (pl.numel + kTile - 1) / kTile;
    plans.push_back(pl);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[0].scalar_type(), "rsgd_step_cpu_", [&] {
    std::vector<scalar_t*> p, m;
    std::vector<const scalar_t*> g;
    for (const auto k : c10::irange(params.size())) {
      if (params[k].numel() == 0) continue;
      p.push_back(params[k].data_ptr<scalar_t>());
      g.push_back(grads[k].const_data_ptr<scalar_t>());
      m.push_back(memory[k].data_ptr<scalar_t>());
    }
    rsgd_tensors_cpu<scalar_t>(TileJob<scalar_t>{p, g, m, plans, config}, total_tiles);
  });
}

void rsgd_step_(at::TensorList params, at::TensorList grads, at::TensorList memory,
                c10::ArrayRef<int64_t> tensor_ids, c10::ArrayRef<int64_t> steps, c10::ArrayRef<double> probs,
                const RSGDStepConfig& config) {
  const auto device = detail::check_rsgd_inputs(params, grads, memory, tensor_ids, steps, probs);
  if (device == c10::DeviceType::CPU) {
    rsgd_step_cpu_(params, grads, memory, tensor_ids, steps, probs, config);
  } else if (device == c10::DeviceType::CUDA && config.fused_cuda) {
    rsgd_step_cuda_(params, grads, memory, tensor_ids, steps, probs, config);
  } else {
    rsgd_step_aten_(params, grads, memory, tensor_ids, steps, probs, config);
  }
}

#if !SGDX_WITH_CUDA
void rsgd_step_cuda_(at::TensorList, at::TensorList, at::TensorList, c10::ArrayRef<int64_t>,
                     c10::ArrayRef<int64_t>, c10::ArrayRef<double>, const RSGDStepConfig&) {
  TORCH_CHECK(false, "rsgd_step_cuda_: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
#endif

}  // namespace sgdx::ops

#include "sgdx/ops/rsgd_step.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "sgdx/config.h"
#include "sgdx/detail/philox.h"
#include "sgdx/detail/rsgd_math.h"

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
// compute-bound: vectorised across blocks it runs ~2.5x faster than scalar),
// then one vectorisable pass over p, g, m. Both are compiled for AVX-512,
// AVX2 and baseline x86-64 and picked at run time (GCC target_clones).
constexpr int64_t kTile = 1024;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SGDX_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SGDX_MULTIVERSION
#endif

// xi for the elements [i0, i0 + len) of a tile (i0 a multiple of 16): the
// high bytes come 16 per Philox call (vectorised), and the rare elements whose
// high byte equals the threshold's are resolved with their low bits.
SGDX_MULTIVERSION
void fill_high_bytes(uint64_t seed, uint32_t tensor_id, uint32_t step, uint64_t first_block16, int64_t blocks,
                     uint8_t* __restrict out) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  // In memory, the bytes of v[0..3] are already in the documented order;
  // storing whole words lets the loop vectorise at full width.
  auto* words = reinterpret_cast<uint32_t*>(out);
  for (int64_t b = 0; b < blocks; ++b) {
    const auto r =
        sgdx::detail::rsgd_high_block(seed, tensor_id, step, first_block16 + static_cast<uint64_t>(b));
    words[4 * b + 0] = r.v[0];
    words[4 * b + 1] = r.v[1];
    words[4 * b + 2] = r.v[2];
    words[4 * b + 3] = r.v[3];
  }
#else
  for (int64_t b = 0; b < blocks; ++b) {
    const auto r =
        sgdx::detail::rsgd_high_block(seed, tensor_id, step, first_block16 + static_cast<uint64_t>(b));
    for (int j = 0; j < 16; ++j) out[16 * b + j] = static_cast<uint8_t>(sgdx::detail::rsgd_high_byte(r, j));
  }
#endif
}

void fill_draws(uint64_t seed, uint32_t tensor_id, uint32_t step, int64_t i0, int64_t len, uint64_t threshold,
                uint32_t* __restrict xi) {
  alignas(64) uint8_t high[kTile];
  fill_high_bytes(seed, tensor_id, step, static_cast<uint64_t>(i0 / 16), (len + 15) / 16, high);
  const auto t_high = static_cast<uint8_t>(threshold >> 24);
  for (int64_t j = 0; j < len; ++j) xi[j] = high[j] < t_high;
  for (const void* hit = std::memchr(high, t_high, static_cast<size_t>(len)); hit != nullptr;) {
    const int64_t j = static_cast<const uint8_t*>(hit) - high;
    xi[j] =
        sgdx::detail::rsgd_resolve(t_high, threshold, seed, tensor_id, step, static_cast<uint64_t>(i0 + j));
    hit = j + 1 < len ? std::memchr(high + j + 1, t_high, static_cast<size_t>(len - j - 1)) : nullptr;
  }
}

// xi == nullptr: the same fixed_xi for every element.
template <typename scalar_t, typename opmath_t>
__attribute__((always_inline)) inline void update_tile(scalar_t* __restrict p, const scalar_t* __restrict g,
                                                       scalar_t* __restrict m, const uint32_t* __restrict xi,
                                                       int64_t len, bool fixed_xi, opmath_t lr, opmath_t wd,
                                                       bool previous) {
  for (int64_t i = 0; i < len; ++i) {
    const bool reinforce = xi != nullptr ? xi[i] != 0 : fixed_xi;
    opmath_t pi = static_cast<opmath_t>(p[i]), mi = static_cast<opmath_t>(m[i]);
    sgdx::detail::rsgd_update<opmath_t>(pi, static_cast<opmath_t>(g[i]), mi, reinforce, lr, wd, previous);
    p[i] = static_cast<scalar_t>(pi);
    m[i] = static_cast<scalar_t>(mi);
  }
}

SGDX_MULTIVERSION
void update_tile_f32(float* p, const float* g, float* m, const uint32_t* xi, int64_t len, bool fixed_xi,
                     float lr, float wd, bool previous) {
  update_tile<float, float>(p, g, m, xi, len, fixed_xi, lr, wd, previous);
}

SGDX_MULTIVERSION
void update_tile_f64(double* p, const double* g, double* m, const uint32_t* xi, int64_t len, bool fixed_xi,
                     double lr, double wd, bool previous) {
  update_tile<double, double>(p, g, m, xi, len, fixed_xi, lr, wd, previous);
}

template <typename scalar_t>
void update_tile_any(scalar_t* p, const scalar_t* g, scalar_t* m, const uint32_t* xi, int64_t len,
                     bool fixed_xi, double lr, double wd, bool previous) {
  using opmath_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, float>) {
    update_tile_f32(p, g, m, xi, len, fixed_xi, static_cast<float>(lr), static_cast<float>(wd), previous);
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    update_tile_f64(p, g, m, xi, len, fixed_xi, lr, wd, previous);
  } else {
    update_tile<scalar_t, opmath_t>(p, g, m, xi, len, fixed_xi, static_cast<opmath_t>(lr),
                                    static_cast<opmath_t>(wd), previous);
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

// All tiles of all tensors in one parallel region (one fork/join per step).
template <typename scalar_t>
void rsgd_tensors_cpu(const std::vector<scalar_t*>& p, const std::vector<const scalar_t*>& g,
                      const std::vector<scalar_t*>& m, const std::vector<TensorPlan>& plans,
                      int64_t total_tiles, const RSGDStepConfig& c) {
  at::parallel_for(0, total_tiles, 16, [&](int64_t t0, int64_t t1) {
    alignas(64) uint32_t xi[kTile];  // 32-bit lanes like float: the select vectorises
    // The tensor holding tile t0, then walk forward.
    size_t k = static_cast<size_t>(
        std::upper_bound(plans.begin(), plans.end(), t0,
                         [](int64_t tile, const TensorPlan& pl) { return tile < pl.first_tile; }) -
        plans.begin() - 1);
    for (int64_t t = t0; t < t1; ++t) {
      while (t >= plans[k].first_tile + (plans[k].numel + kTile - 1) / kTile) ++k;
      const TensorPlan& pl = plans[k];
      const int64_t i0 = (t - pl.first_tile) * kTile;
      const int64_t len = std::min(kTile, pl.numel - i0);
      if (pl.draw) fill_draws(c.seed, pl.tensor_id, pl.step, i0, len, pl.threshold, xi);
      update_tile_any<scalar_t>(p[k] + i0, g[k] + i0, m[k] + i0, pl.draw ? xi : nullptr, len, pl.fixed_xi,
                                c.lr, c.weight_decay, c.memory_previous);
    }
  });
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
    rsgd_tensors_cpu<scalar_t>(p, g, m, plans, total_tiles, config);
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

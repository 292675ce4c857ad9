// The fused GradQueue-SGDM step on CPU. Every loop is branch-free inside (the
// options are template parameters) so that GCC vectorises it, and the hot
// functions are compiled for AVX-512, AVX2 and baseline x86-64 (target_clones).
// Reductions (sum of Delta-rho, tensor moments) go through 16 lane
// accumulators per tile and fixed blocks, so the result does not depend on the
// thread count (a resumed run is bit-identical).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "sgdx/config.h"
#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops {
namespace {

constexpr int64_t kBlock = 1 << 15;  // elements per parallel work item
constexpr int64_t kTile = 256;       // elements per inner tile
constexpr int kLanes = 16;

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SGDX_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SGDX_MULTIVERSION
#endif
#define SGDX_INLINE __attribute__((always_inline)) inline

template <typename T>
struct Ptrs {
  T* __restrict__ p;
  const T* __restrict__ g;
  T* __restrict__ v;
  T* __restrict__ s1;
  T* __restrict__ s2;
  T* __restrict__ slot;
  const T* __restrict__ old;  // null when there is no leaving row or it is `slot` itself (old_in_slot)
};

template <typename T>
struct Scalars {
  T wd, lr, mom, damp1, inv_n, eps, inv_zref, rmin, rmax, rate, rho_fixed, kappa;
};

// kMom: 0 none, 1 heavy ball first step, 2 heavy ball, 3 nesterov first step, 4 nesterov.
template <typename T, bool kElem, bool kExact, int kOld, bool kStats, bool kKappa1, int kMom>
SGDX_INLINE void update_tile(const Ptrs<T>& P, int64_t i0, int64_t len, const Scalars<T>& s, T* __restrict__ rho_out) {
  T* __restrict__ p = P.p + i0;
  const T* __restrict__ g = P.g + i0;
  T* __restrict__ v = P.v ? P.v + i0 : nullptr;
  T* __restrict__ s1 = P.s1 + i0;
  T* __restrict__ s2 = P.s2 + i0;
  T* __restrict__ slot = kExact ? P.slot + i0 : nullptr;
  const T* __restrict__ old = kOld == 1 ? P.old + i0 : nullptr;
  // Locals, not loads through `s` (which the stores could alias): lets GCC vectorise.
  const T wd = s.wd, lr = s.lr, mom = s.mom, damp1 = s.damp1, inv_n = s.inv_n, eps = s.eps;
  const T inv_zref = s.inv_zref, rmin = s.rmin, rmax = s.rmax, rate = s.rate, rho_fixed = s.rho_fixed;
  const T kappa = s.kappa;
#pragma GCC ivdep
  for (int64_t i = 0; i < len; ++i) {
    const T d = g[i] + wd * p[i];
    T rho = rho_fixed;
    if constexpr (kElem && kStats) {
      const T mu = s1[i] * inv_n;
      const T var = s2[i] * inv_n - mu * mu;
      const T sigma = std::sqrt(var > T(0) ? var : T(0));
      const T z = std::abs(d - mu) / (sigma + eps) * inv_zref;
      const T zk = kKappa1 ? z : static_cast<T>(std::pow(z, kappa));
      rho = std::min(std::max(zk, rmin), rmax);
    }
    if constexpr (kElem) rho_out[i] = rho;
    const T gh = rho * d;
    if constexpr (kExact) {
      T o = T(0);
      if constexpr (kOld == 1) o = old[i];
      if constexpr (kOld == 2) o = slot[i];  // the leaving row is the one being overwritten
      s1[i] += d - o;
      s2[i] += d * d - o * o;
      slot[i] = d;
    } else {
      s1[i] += rate * (d - s1[i]);
      s2[i] += rate * (d * d - s2[i]);
    }
    T u = gh;
    if constexpr (kMom == 1 || kMom == 3) {
      v[i] = gh;
      u = kMom == 3 ? gh + mom * gh : gh;
    } else if constexpr (kMom == 2 || kMom == 4) {
      const T nv = mom * v[i] + damp1 * gh;
      v[i] = nv;
      u = kMom == 4 ? gh + mom * nv : nv;
    }
    p[i] -= lr * u;
  }
}

// Elements [b0, b1) (whole tiles but the last); returns the sum of Delta-rho.
template <typename T, bool kElem, bool kExact, int kOld, bool kStats, bool kKappa1, int kMom>
SGDX_INLINE double update_block(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s) {
  alignas(64) T rho[kTile];
  double acc[kLanes] = {};
  for (int64_t t = b0; t < b1; t += kTile) {
    const int64_t len = std::min(kTile, b1 - t);
    update_tile<T, kElem, kExact, kOld, kStats, kKappa1, kMom>(P, t, len, s, rho);
    if constexpr (kElem) {
      if (len == kTile) {
        for (int64_t j = 0; j < kTile; j += kLanes)
          for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(rho[j + l]);
      } else {
        for (int64_t j = 0; j < len; ++j) acc[j % kLanes] += static_cast<double>(rho[j]);
      }
    }
  }
  double total = 0;
  for (double a : acc) total += a;
  return total;
}

template <typename T, bool kExact>
SGDX_INLINE void moments_block(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s, double* dev_out,
                               double* var_out) {
  double dev[kLanes] = {}, var[kLanes] = {};
  alignas(64) T a[kTile], b[kTile];
  for (int64_t t = b0; t < b1; t += kTile) {
    const int64_t len = std::min(kTile, b1 - t);
    const T* __restrict__ p = P.p + t;
    const T* __restrict__ g = P.g + t;
    const T* __restrict__ s1 = P.s1 + t;
    const T* __restrict__ s2 = P.s2 + t;
    const T wd = s.wd, inv_n = s.inv_n;
    for (int64_t i = 0; i < len; ++i) {
      const T d = g[i] + wd * p[i];
      const T mu = s1[i] * inv_n;
      const T v = s2[i] * inv_n - mu * mu;
      a[i] = (d - mu) * (d - mu);
      b[i] = v > T(0) ? v : T(0);
    }
    if (len == kTile) {
      for (int64_t j = 0; j < kTile; j += kLanes)
        for (int l = 0; l < kLanes; ++l) dev[l] += static_cast<double>(a[j + l]), var[l] += static_cast<double>(b[j + l]);
    } else {
      for (int64_t j = 0; j < len; ++j) dev[j % kLanes] += static_cast<double>(a[j]), var[j % kLanes] += static_cast<double>(b[j]);
    }
  }
  double sd = 0, sv = 0;
  for (int l = 0; l < kLanes; ++l) sd += dev[l], sv += var[l];
  *dev_out = sd;
  *var_out = sv;
}

struct Flags {
  bool elem, exact, stats, kappa1;
  int old;  // 0 none, 1 separate row, 2 the slot itself
  int mom;
};

// One multiversioned entry per dtype; the switch picks the instantiation.
template <typename T>
SGDX_INLINE double dispatch_update(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s, const Flags& f) {
#define SGDX_GQ_MOM(E, X, O, S, K)                                                     \
  switch (f.mom) {                                                                   \
    case 0: return update_block<T, E, X, O, S, K, 0>(P, b0, b1, s);                  \
    case 1: return update_block<T, E, X, O, S, K, 1>(P, b0, b1, s);                  \
    case 2: return update_block<T, E, X, O, S, K, 2>(P, b0, b1, s);                  \
    case 3: return update_block<T, E, X, O, S, K, 3>(P, b0, b1, s);                  \
    default: return update_block<T, E, X, O, S, K, 4>(P, b0, b1, s);                 \
  }
#define SGDX_GQ_K(E, X, O, S) \
  if (f.kappa1) { SGDX_GQ_MOM(E, X, O, S, true) } else { SGDX_GQ_MOM(E, X, O, S, false) }
#define SGDX_GQ_S(E, X, O) \
  if (f.stats) { SGDX_GQ_K(E, X, O, true) } else { SGDX_GQ_MOM(E, X, O, false, true) }
#define SGDX_GQ_X(E)                                        \
  if (f.exact) {                                            \
    if (f.old == 1) { SGDX_GQ_S(E, true, 1) } else if (f.old == 2) { SGDX_GQ_S(E, true, 2) } else { SGDX_GQ_S(E, true, 0) } \
  } else {                                                  \
    SGDX_GQ_S(E, false, 0)                                  \
  }
  if (f.elem) {
    SGDX_GQ_X(true)
  } else {
    SGDX_GQ_X(false)
  }
#undef SGDX_GQ_X
#undef SGDX_GQ_S
#undef SGDX_GQ_K
#undef SGDX_GQ_MOM
}

SGDX_MULTIVERSION double update_f32(const Ptrs<float>& P, int64_t b0, int64_t b1, const Scalars<float>& s,
                                    const Flags& f) {
  return dispatch_update<float>(P, b0, b1, s, f);
}
SGDX_MULTIVERSION double update_f64(const Ptrs<double>& P, int64_t b0, int64_t b1, const Scalars<double>& s,
                                    const Flags& f) {
  return dispatch_update<double>(P, b0, b1, s, f);
}
SGDX_MULTIVERSION void moments_f32(const Ptrs<float>& P, int64_t b0, int64_t b1, const Scalars<float>& s, bool exact,
                                   double* dev, double* var) {
  if (exact) moments_block<float, true>(P, b0, b1, s, dev, var);
  else moments_block<float, false>(P, b0, b1, s, dev, var);
}
SGDX_MULTIVERSION void moments_f64(const Ptrs<double>& P, int64_t b0, int64_t b1, const Scalars<double>& s, bool exact,
                                   double* dev, double* var) {
  if (exact) moments_block<double, true>(P, b0, b1, s, dev, var);
  else moments_block<double, false>(P, b0, b1, s, dev, var);
}
inline double update_any(const Ptrs<float>& P, int64_t b0, int64_t b1, const Scalars<float>& s, const Flags& f) {
  return update_f32(P, b0, b1, s, f);
}
inline double update_any(const Ptrs<double>& P, int64_t b0, int64_t b1, const Scalars<double>& s, const Flags& f) {
  return update_f64(P, b0, b1, s, f);
}
inline void moments_any(const Ptrs<float>& P, int64_t b0, int64_t b1, const Scalars<float>& s, bool e, double* d,
                        double* v) {
  moments_f32(P, b0, b1, s, e, d, v);
}
inline void moments_any(const Ptrs<double>& P, int64_t b0, int64_t b1, const Scalars<double>& s, bool e, double* d,
                        double* v) {
  moments_f64(P, b0, b1, s, e, d, v);
}

template <typename T>
double run(GradQueueTensor& t, const GradQueueStepConfig& c) {
  const bool exact = t.ema_rate == 0.0;
  Ptrs<T> P{t.param.data_ptr<T>(), t.grad.const_data_ptr<T>(),
            t.momentum.defined() ? t.momentum.data_ptr<T>() : nullptr,
            t.s1.data_ptr<T>(), t.s2.data_ptr<T>(),
            t.slot.defined() ? t.slot.data_ptr<T>() : nullptr, nullptr};
  const bool old_in_slot = t.old.defined() && t.slot.defined() && t.old.is_same(t.slot);
  const bool old_same_memory = t.old.defined() && t.slot.defined() && t.old.const_data_ptr() == t.slot.const_data_ptr();
  if (t.old.defined() && !old_in_slot && !old_same_memory) P.old = t.old.const_data_ptr<T>();
  const int64_t n = t.param.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool stats = t.stats_count > 0;
  Scalars<T> s;
  s.wd = static_cast<T>(c.weight_decay);
  s.lr = static_cast<T>(c.lr);
  s.mom = static_cast<T>(c.momentum);
  s.damp1 = static_cast<T>(1.0 - c.dampening);
  s.inv_n = stats && exact ? static_cast<T>(1.0 / double(t.stats_count)) : T(1);
  s.eps = static_cast<T>(c.eps);
  s.inv_zref = static_cast<T>(1.0 / kGradQueueZRef);
  s.rmin = static_cast<T>(c.rho_min);
  s.rmax = static_cast<T>(c.rho_max);
  s.rate = static_cast<T>(t.ema_rate);
  s.kappa = static_cast<T>(c.kappa);
  s.rho_fixed = T(1);
  double rho_tensor = 1.0;
  if (!c.per_element && stats) {
    std::vector<double> dev(blocks), var(blocks);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        moments_any(P, b * kBlock, std::min(n, (b + 1) * kBlock), s, exact, &dev[b], &var[b]);
    });
    double sd = 0.0, sv = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sd += dev[b], sv += var[b];
    const double z = std::sqrt(sd) / (std::sqrt(sv) + c.eps);
    rho_tensor = std::clamp(c.kappa == 1.0 ? z : std::pow(z, c.kappa), c.rho_min, c.rho_max);
    s.rho_fixed = static_cast<T>(rho_tensor);
  }
  Flags f;
  f.elem = c.per_element;
  f.exact = exact;
  f.old = !exact || !t.old.defined() ? 0 : (P.old != nullptr ? 1 : 2);
  f.stats = stats;
  f.kappa1 = c.kappa == 1.0;
  f.mom = c.momentum == 0.0 ? 0 : (c.nesterov ? (t.first_step ? 3 : 4) : (t.first_step ? 1 : 2));
  std::vector<double> rho_part(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) rho_part[b] = update_any(P, b * kBlock, std::min(n, (b + 1) * kBlock), s, f);
  });
  if (!c.per_element) return rho_tensor * static_cast<double>(n);
  double total = 0.0;
  for (double r : rho_part) total += r;
  return total;
}

}  // namespace

namespace {
void check_operands(const GradQueueTensor& t, const GradQueueStepConfig& c) {
  const auto& p = t.param;
  TORCH_CHECK(p.defined() && t.grad.defined() && t.s1.defined() && t.s2.defined(),
              "gradqueue_step_: param, grad, s1 and s2 must be defined");
  const bool exact = t.ema_rate == 0.0;
  TORCH_CHECK(!exact || t.slot.defined(), "gradqueue_step_: exact storage needs the queue slot");
  TORCH_CHECK(c.momentum == 0.0 || t.momentum.defined(), "gradqueue_step_: momentum buffer is undefined");
  for (const at::Tensor* x : {&t.grad, &t.momentum, &t.s1, &t.s2, &t.slot, &t.old, &t.direction}) {
    if (!x->defined()) continue;
    TORCH_CHECK(x->device() == p.device() && x->scalar_type() == p.scalar_type(),
                "gradqueue_step_: operand on ", x->device(), " with dtype ", x->scalar_type(),
                " does not match the parameter (", p.device(), ", ", p.scalar_type(), ")");
    TORCH_CHECK(x->numel() == p.numel() && x->is_contiguous(), "gradqueue_step_: operand of ", x->numel(),
                " elements (contiguous: ", x->is_contiguous(), ") for a parameter of ", p.numel());
  }
  TORCH_CHECK(p.is_contiguous(), "gradqueue_step_: the parameter must be contiguous");
  TORCH_CHECK(t.stats_count >= 0, "gradqueue_step_: stats_count must be >= 0, got ", t.stats_count);
  TORCH_CHECK(at::isFloatingType(p.scalar_type()), "gradqueue_step_: parameters must be floating point, got ",
              p.scalar_type());
}
}  // namespace

double gradqueue_step_(GradQueueTensor& t, const GradQueueStepConfig& c) {
  check_operands(t, c);
  const auto& p = t.param;
  if (p.device().is_cpu() && (p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble) &&
      !t.direction.defined())
    return p.scalar_type() == at::kFloat ? run<float>(t, c) : run<double>(t, c);
  return gradqueue_step_aten_(t, c);
}

double gradqueue_step_aten_(GradQueueTensor& t, const GradQueueStepConfig& c) {
  check_operands(t, c);
  c10::AutoGradMode no_grad(false);
  const auto p = t.param.view(-1);
  const auto dt = at::promote_types(p.scalar_type(), at::kFloat);  // opmath: fp32 for half/bf16
  const auto P = p.to(dt);
  const auto d = t.grad.view(-1).to(dt) + c.weight_decay * P;
  auto s1 = t.s1.view(-1), s2 = t.s2.view(-1);
  const bool exact = t.ema_rate == 0.0;
  const bool stats = t.stats_count > 0;
  at::Tensor rho;
  double rho_sum = static_cast<double>(p.numel());
  if (stats) {
    const double inv_n = exact ? 1.0 / static_cast<double>(t.stats_count) : 1.0;
    const auto mu = s1.to(dt) * inv_n;
    const auto var = (s2.to(dt) * inv_n - mu * mu).clamp_min(0);
    if (c.per_element) {
      auto z = (d - mu).abs() / (var.sqrt() + c.eps) / kGradQueueZRef;
      rho = (c.kappa == 1.0 ? z : z.pow(c.kappa)).clamp(c.rho_min, c.rho_max);
      rho_sum = rho.sum(at::kDouble).item<double>();
    } else {
      const double dev = (d - mu).square().sum(at::kDouble).item<double>();
      const double vs = var.sum(at::kDouble).item<double>();
      const double z = std::sqrt(dev) / (std::sqrt(vs) + c.eps);
      const double r = std::clamp(c.kappa == 1.0 ? z : std::pow(z, c.kappa), c.rho_min, c.rho_max);
      rho = at::full({}, r, d.options());
      rho_sum = r * static_cast<double>(p.numel());
    }
  }
  const auto gh = t.direction.defined() ? t.direction.view(-1).to(dt) : (rho.defined() ? rho * d : d);
  if (exact) {
    const auto o = t.old.defined() ? t.old.view(-1).to(dt) : at::zeros_like(d);  // before the slot is written
    s1.add_((d - o).to(s1.scalar_type()));
    s2.add_((d * d - o * o).to(s2.scalar_type()));
    t.slot.view(-1).copy_(d);
  } else {
    s1.add_((t.ema_rate * (d - s1.to(dt))).to(s1.scalar_type()));
    s2.add_((t.ema_rate * (d * d - s2.to(dt))).to(s2.scalar_type()));
  }
  auto u = gh;
  if (c.momentum != 0.0) {
    auto v = t.momentum.view(-1);
    const auto nv = t.first_step ? gh : c.momentum * v.to(dt) + (1.0 - c.dampening) * gh;
    v.copy_(nv);
    u = c.nesterov ? gh + c.momentum * nv : nv;
  }
  p.copy_(P - c.lr * u);
  return rho_sum;
}

namespace detail {
void check_gradqueue_list(const std::vector<GradQueueTensor>& tensors, const GradQueueStepConfig& config,
                          const at::Tensor& grad_scale, const at::Tensor& found_inf, bool cuda) {
  if (tensors.empty()) return;
  const auto device = tensors[0].param.device();
  const auto dtype = tensors[0].param.scalar_type();
  TORCH_CHECK(!cuda || device.is_cuda(), "gradqueue_step_cuda_: tensors must be on a CUDA device, got ", device);
  for (const auto k : c10::irange(tensors.size())) {
    TORCH_CHECK(!cuda || !tensors[k].direction.defined(), "gradqueue_step_cuda_: tensor ", k,
                " has a direction; the CUDA kernel takes Delta-rho * d only (use gradqueue_step_aten_)");
  }
  for (const auto k : c10::irange(tensors.size())) {
    const auto& t = tensors[k];
    TORCH_CHECK(t.param.defined() && t.param.device() == device && t.param.scalar_type() == dtype,
                "gradqueue_step: tensor ", k, " is on ", t.param.defined() ? t.param.device() : c10::Device("cpu"),
                " with dtype ", t.param.defined() ? t.param.scalar_type() : at::ScalarType::Undefined,
                "; every tensor must be on ", device, " with dtype ", dtype);
    try {
      check_operands(t, config);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "gradqueue_step: tensor ", k, ": ", e.msg());
    }
  }
  for (const auto& [s, name] : {std::pair{&grad_scale, "grad_scale"}, std::pair{&found_inf, "found_inf"}}) {
    if (!s->defined()) continue;
    TORCH_CHECK(s->numel() == 1 && s->scalar_type() == at::kFloat && s->device() == device, "gradqueue_step: ",
                name, " must be one float32 value on ", device, ", got ", s->numel(), " ", s->scalar_type(),
                " value(s) on ", s->device());
  }
}
}  // namespace detail

#if !SGDX_WITH_CUDA
at::Tensor gradqueue_step_cuda_(std::vector<GradQueueTensor>&, const GradQueueStepConfig&, const at::Tensor&,
                                const at::Tensor&) {
  TORCH_CHECK(false, "gradqueue_step_cuda_: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
#endif

}  // namespace sgdx::ops

// The fused GradQueue-SGDM step on CPU. Every loop is branch-free inside (the
// options are template parameters) so that GCC vectorises it, and the hot
// functions are compiled for AVX-512, AVX2 and baseline x86-64 (sgdx/cpu_isa.h).
// Reductions (sum of Delta-rho, tensor moments) go through 16 lane
// accumulators per tile and fixed blocks, so the result does not depend on the
// thread count (a resumed run is bit-identical).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../cpu/isa_targets.h"
#include "gradqueue_step_internal.h"
#include "sgdx/cpu_isa.h"
#include "sgdx/detail/gradqueue_math.h"
#include "sgdx/ops/gradqueue_step.h"

// at::parallel_for expands `#pragma omp parallel` here: without -fopenmp
// (CMakeLists.txt) the kernel would silently run on one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "compile this file with -fopenmp: LibTorch is an OpenMP build"
#endif

namespace sgdx::ops {
namespace {

constexpr int64_t kBlock = 1 << 15;  // elements per parallel work item
constexpr int64_t kTile = 256;       // elements per inner tile
constexpr int kLanes = 16;

using sgdx::detail::MomentumMode;

// The leaving row of an exact window: none, a separate row, or the slot being overwritten.
enum class OldRow { none, separate, in_slot };

template <typename T>
struct Ptrs {
  T* __restrict__ p;
  const T* __restrict__ g;
  T* __restrict__ v;
  void* __restrict__ s1;  // the mean: double for exact storage (MeanT), else T
  T* __restrict__ s2;
  T* __restrict__ slot;
  const T* __restrict__ old;  // null unless OldRow::separate
};

template <typename T>
struct Scalars {
  T wd, lr, mom, damp1, inv_var, eps, inv_zref, rmin, rmax, rate, rho_fixed, kappa;
  double inv_push;
};

// The window mean's type (gradqueue_mean_dtype): double for exact storage.
template <typename T, bool kExact>
using MeanT = std::conditional_t<kExact, double, T>;

template <typename T, bool kElem, bool kExact, OldRow kOld, bool kStats, bool kKappa1, MomentumMode kMom>
SGDX_ALWAYS_INLINE void update_tile(const Ptrs<T>& P, int64_t i0, int64_t len, const Scalars<T>& s,
                                    bool first, T* __restrict__ rho_out) {
  T* __restrict__ p = P.p + i0;
  const T* __restrict__ g = P.g + i0;
  using M = MeanT<T, kExact>;
  T* __restrict__ v = P.v ? P.v + i0 : nullptr;
  M* __restrict__ s1 = static_cast<M*>(P.s1) + i0;
  T* __restrict__ s2 = P.s2 + i0;
  T* __restrict__ slot = kExact ? P.slot + i0 : nullptr;
  const T* __restrict__ old = kOld == OldRow::separate ? P.old + i0 : nullptr;
  // Locals, not loads through `s` (which the stores could alias): lets GCC vectorise.
  const T wd = s.wd, lr = s.lr, mom = s.mom, damp1 = s.damp1, inv_var = s.inv_var;
  const M inv_push = static_cast<M>(s.inv_push);
  const T eps = s.eps, inv_zref = s.inv_zref, rmin = s.rmin, rmax = s.rmax, rate = s.rate;
  const T rho_fixed = s.rho_fixed, kappa = s.kappa;
#pragma GCC ivdep
  for (int64_t i = 0; i < len; ++i) {
    const T d = g[i] + wd * p[i];
    M mu = s1[i];
    T m2 = s2[i];
    T rho = rho_fixed;
    if constexpr (kElem && kStats) {
      const T dev = static_cast<T>(static_cast<M>(d) - mu);
      rho = sgdx::detail::element_rho<T, kKappa1>(dev, m2 * inv_var, eps, inv_zref, kappa, rmin, rmax);
    }
    if constexpr (kElem) rho_out[i] = rho;
    const T gh = rho * d;
    if constexpr (kExact) {
      T o = T(0);
      if constexpr (kOld == OldRow::separate) o = old[i];
      if constexpr (kOld == OldRow::in_slot) o = slot[i];
      sgdx::detail::window_push<T, M>(mu, m2, d, o, kOld != OldRow::none, inv_push);
      slot[i] = d;
    } else {
      sgdx::detail::ema_push(mu, m2, d, rate);
    }
    s1[i] = mu;
    s2[i] = m2;
    T vi = kMom == MomentumMode::none ? T(0) : v[i];
    const T u = sgdx::detail::momentum_direction<T, kMom>(vi, gh, mom, damp1, first);
    if constexpr (kMom != MomentumMode::none) v[i] = vi;
    p[i] -= lr * u;
  }
}

// Elements [b0, b1) (whole tiles but the last); returns the sum of Delta-rho.
template <typename T, bool kElem, bool kExact, OldRow kOld, bool kStats, bool kKappa1, MomentumMode kMom>
SGDX_ALWAYS_INLINE double update_block(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                       bool first) {
  alignas(64) T rho[kTile];
  double acc[kLanes] = {};
  for (int64_t t = b0; t < b1; t += kTile) {
    const int64_t len = std::min(kTile, b1 - t);
    update_tile<T, kElem, kExact, kOld, kStats, kKappa1, kMom>(P, t, len, s, first, rho);
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

// Tensor granularity: sum (d - mu)^2 and sum sigma^2 over [b0, b1).
template <typename T, bool kExact>
SGDX_ALWAYS_INLINE void moments_block(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                      double* dev_out, double* var_out) {
  double dev[kLanes] = {}, var[kLanes] = {};
  alignas(64) T a[kTile], b[kTile];
  for (int64_t t = b0; t < b1; t += kTile) {
    const int64_t len = std::min(kTile, b1 - t);
    const T* __restrict__ p = P.p + t;
    const T* __restrict__ g = P.g + t;
    using M = MeanT<T, kExact>;
    const M* __restrict__ s1 = static_cast<const M*>(P.s1) + t;
    const T* __restrict__ s2 = P.s2 + t;
    const T wd = s.wd, inv_var = s.inv_var;
    for (int64_t i = 0; i < len; ++i) {
      const T dm = static_cast<T>(static_cast<M>(g[i] + wd * p[i]) - s1[i]);
      const T v = s2[i] * inv_var;
      a[i] = dm * dm;
      b[i] = v > T(0) ? v : T(0);
    }
    if (len == kTile) {
      for (int64_t j = 0; j < kTile; j += kLanes)
        for (int l = 0; l < kLanes; ++l)
          dev[l] += static_cast<double>(a[j + l]), var[l] += static_cast<double>(b[j + l]);
    } else {
      for (int64_t j = 0; j < len; ++j)
        dev[j % kLanes] += static_cast<double>(a[j]), var[j % kLanes] += static_cast<double>(b[j]);
    }
  }
  double sd = 0, sv = 0;
  for (int l = 0; l < kLanes; ++l) sd += dev[l], sv += var[l];
  *dev_out = sd;
  *var_out = sv;
}

struct Flags {
  bool elem, exact, stats, kappa1, first;
  OldRow old;
  MomentumMode mom;
};

// The nested switches pick the instantiation (inlined into each variant's entry).
template <typename T, bool E, bool X, OldRow O, bool S, bool K>
SGDX_ALWAYS_INLINE double dispatch_mom(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                       const Flags& f) {
  switch (f.mom) {
    case MomentumMode::none:
      return update_block<T, E, X, O, S, K, MomentumMode::none>(P, b0, b1, s, f.first);
    case MomentumMode::heavy_ball:
      return update_block<T, E, X, O, S, K, MomentumMode::heavy_ball>(P, b0, b1, s, f.first);
    default:
      return update_block<T, E, X, O, S, K, MomentumMode::nesterov>(P, b0, b1, s, f.first);
  }
}
template <typename T, bool E, bool X, OldRow O>
SGDX_ALWAYS_INLINE double dispatch_stats(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                         const Flags& f) {
  if (!f.stats) return dispatch_mom<T, E, X, O, false, true>(P, b0, b1, s, f);
  if (f.kappa1) return dispatch_mom<T, E, X, O, true, true>(P, b0, b1, s, f);
  return dispatch_mom<T, E, X, O, true, false>(P, b0, b1, s, f);
}
template <typename T, bool E>
SGDX_ALWAYS_INLINE double dispatch_storage(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                           const Flags& f) {
  if (!f.exact) return dispatch_stats<T, E, false, OldRow::none>(P, b0, b1, s, f);
  switch (f.old) {
    case OldRow::separate:
      return dispatch_stats<T, E, true, OldRow::separate>(P, b0, b1, s, f);
    case OldRow::in_slot:
      return dispatch_stats<T, E, true, OldRow::in_slot>(P, b0, b1, s, f);
    default:
      return dispatch_stats<T, E, true, OldRow::none>(P, b0, b1, s, f);
  }
}
template <typename T>
SGDX_ALWAYS_INLINE double dispatch_update(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                          const Flags& f) {
  return f.elem ? dispatch_storage<T, true>(P, b0, b1, s, f) : dispatch_storage<T, false>(P, b0, b1, s, f);
}

template <typename T>
SGDX_ALWAYS_INLINE void dispatch_moments(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                         bool exact, double* dev, double* var) {
  if (exact)
    moments_block<T, true>(P, b0, b1, s, dev, var);
  else
    moments_block<T, false>(P, b0, b1, s, dev, var);
}

// One instance of the update and the moments per x86 variant (sgdx/cpu_isa.h).
template <typename T>
struct Kernels {
  double (*update)(const Ptrs<T>&, int64_t, int64_t, const Scalars<T>&, const Flags&);
  void (*moments)(const Ptrs<T>&, int64_t, int64_t, const Scalars<T>&, bool, double*, double*);
};

template <typename T>
double update_baseline(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s, const Flags& f) {
  return dispatch_update<T>(P, b0, b1, s, f);
}
template <typename T>
void moments_baseline(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s, bool exact, double* dev,
                      double* var) {
  dispatch_moments<T>(P, b0, b1, s, exact, dev, var);
}
#if SGDX_X86_VARIANTS
template <typename T>
SGDX_TARGET_AVX2 double update_avx2(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                    const Flags& f) {
  return dispatch_update<T>(P, b0, b1, s, f);
}
template <typename T>
SGDX_TARGET_AVX2 void moments_avx2(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s, bool exact,
                                   double* dev, double* var) {
  dispatch_moments<T>(P, b0, b1, s, exact, dev, var);
}
template <typename T>
SGDX_TARGET_AVX512 double update_avx512(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                        const Flags& f) {
  return dispatch_update<T>(P, b0, b1, s, f);
}
template <typename T>
SGDX_TARGET_AVX512 void moments_avx512(const Ptrs<T>& P, int64_t b0, int64_t b1, const Scalars<T>& s,
                                       bool exact, double* dev, double* var) {
  dispatch_moments<T>(P, b0, b1, s, exact, dev, var);
}
#endif

template <typename T>
Kernels<T> kernels_for(sgdx::CpuIsa isa) {
#if SGDX_X86_VARIANTS
  if (isa == sgdx::CpuIsa::Avx512) return {&update_avx512<T>, &moments_avx512<T>};
  if (isa == sgdx::CpuIsa::Avx2) return {&update_avx2<T>, &moments_avx2<T>};
#endif
  (void)isa;
  return {&update_baseline<T>, &moments_baseline<T>};
}

template <typename T>
double run(GradQueueTensor& t, const GradQueueStepConfig& c) {
  const bool exact = t.ema_rate == 0.0;
  const Kernels<T> kernels = kernels_for<T>(sgdx::cpu_isa());
  Ptrs<T> P{t.param.data_ptr<T>(),
            t.grad.const_data_ptr<T>(),
            t.momentum.defined() ? t.momentum.data_ptr<T>() : nullptr,
            t.s1.data_ptr(),
            t.s2.data_ptr<T>(),
            t.slot.defined() ? t.slot.data_ptr<T>() : nullptr,
            nullptr};
  const bool old_in_slot =
      t.old.defined() && t.slot.defined() && t.old.const_data_ptr() == t.slot.const_data_ptr();
  if (t.old.defined() && !old_in_slot) P.old = t.old.const_data_ptr<T>();
  const int64_t n = t.param.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool stats = t.scarcity;
  const int64_t n_after = t.old.defined() ? t.count : t.count + 1;
  Scalars<T> s{};
  s.wd = static_cast<T>(c.weight_decay);
  s.lr = static_cast<T>(c.lr);
  s.mom = static_cast<T>(c.momentum);
  s.damp1 = static_cast<T>(1.0 - c.dampening);
  s.inv_var = exact ? static_cast<T>(1.0 / static_cast<double>(std::max<int64_t>(t.count, 1))) : T(1);
  s.inv_push = 1.0 / static_cast<double>(n_after);
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
        kernels.moments(P, b * kBlock, std::min(n, (b + 1) * kBlock), s, exact, &dev[b], &var[b]);
    });
    double sd = 0.0, sv = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sd += dev[b], sv += var[b];
    rho_tensor = sgdx::detail::tensor_rho(sd, sv, c.eps, c.kappa, c.rho_min, c.rho_max);
    s.rho_fixed = static_cast<T>(rho_tensor);
  }
  Flags f{};
  f.elem = c.per_element;
  f.exact = exact;
  f.old = !exact || !t.old.defined() ? OldRow::none : (P.old != nullptr ? OldRow::separate : OldRow::in_slot);
  f.stats = stats;
  f.kappa1 = c.kappa == 1.0;
  f.first = t.first_step;
  f.mom = c.momentum == 0.0 ? MomentumMode::none
                            : (c.nesterov ? MomentumMode::nesterov : MomentumMode::heavy_ball);
  std::vector<double> rho_part(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      rho_part[b] = kernels.update(P, b * kBlock, std::min(n, (b + 1) * kBlock), s, f);
  });
  if (!c.per_element) return rho_tensor * static_cast<double>(n);
  double total = 0.0;
  for (double r : rho_part) total += r;
  return total;
}

}  // namespace

namespace detail {
double gradqueue_step_cpu(GradQueueTensor& t, const GradQueueStepConfig& c) {
  return t.param.scalar_type() == at::kFloat ? run<float>(t, c) : run<double>(t, c);
}
}  // namespace detail

}  // namespace sgdx::ops

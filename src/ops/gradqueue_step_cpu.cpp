#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops {
namespace {

// Fixed blocks so that the reductions do not depend on the thread count
// (a resumed run must be bit-identical).
constexpr int64_t kBlock = 1 << 15;

template <typename T>
struct Ptrs {
  T *p, *g, *v, *s1, *s2, *slot;
  const T* old;
};

template <typename T>
inline double clip_rho(double z, const GradQueueStepConfig& c) {
  const double r = c.kappa == 1.0 ? z : std::pow(z, c.kappa);
  return std::clamp(r, c.rho_min, c.rho_max);
}

// The update of elements [i0, i1). kPerElement: Delta-rho from each element's
// z-score; otherwise `rho` for all. kExact: window sums, else running moments.
template <typename T, bool kPerElement, bool kExact>
double update_range(const Ptrs<T>& P, int64_t i0, int64_t i1, const GradQueueTensor& t,
                    const GradQueueStepConfig& c, bool stats, double rho_tensor) {
  const T wd = static_cast<T>(c.weight_decay), lr = static_cast<T>(c.lr);
  const T mom = static_cast<T>(c.momentum), damp1 = static_cast<T>(1.0 - c.dampening);
  const T inv_n = stats && kExact ? static_cast<T>(1.0 / double(t.stats_count)) : T(1);
  const T eps = static_cast<T>(c.eps), inv_zref = static_cast<T>(1.0 / kGradQueueZRef);
  const T rmin = static_cast<T>(c.rho_min), rmax = static_cast<T>(c.rho_max);
  const T rate = static_cast<T>(t.ema_rate);
  const bool kappa1 = c.kappa == 1.0, use_mom = c.momentum != 0.0, first = t.first_step;
  const bool nesterov = c.nesterov;
  const T rho_fixed = stats ? static_cast<T>(rho_tensor) : T(1);
  double rho_sum = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const T d = P.g[i] + wd * P.p[i];
    T rho = rho_fixed;
    if constexpr (kPerElement) {
      if (stats) {
        const T mu = P.s1[i] * inv_n;
        const T var = P.s2[i] * inv_n - mu * mu;
        const T sigma = std::sqrt(std::max(var, T(0)));
        const T z = std::abs(d - mu) / (sigma + eps) * inv_zref;
        rho = std::clamp(kappa1 ? z : static_cast<T>(std::pow(z, static_cast<T>(c.kappa))), rmin, rmax);
      }
      rho_sum += static_cast<double>(rho);
    }
    const T gh = rho * d;
    if constexpr (kExact) {
      const T o = P.old ? P.old[i] : T(0);
      P.s1[i] += d - o;
      P.s2[i] += d * d - o * o;
      P.slot[i] = d;
    } else {
      P.s1[i] += rate * (d - P.s1[i]);
      P.s2[i] += rate * (d * d - P.s2[i]);
    }
    T u = gh;
    if (use_mom) {
      const T v = first ? gh : mom * P.v[i] + damp1 * gh;
      P.v[i] = v;
      u = nesterov ? gh + mom * v : v;
    }
    P.p[i] -= lr * u;
  }
  return rho_sum;
}

// Sum of (d - mu)^2 and of sigma^2 over [i0, i1).
template <typename T, bool kExact>
std::pair<double, double> tensor_moments(const Ptrs<T>& P, int64_t i0, int64_t i1, const GradQueueTensor& t,
                                         const GradQueueStepConfig& c) {
  const T wd = static_cast<T>(c.weight_decay);
  const T inv_n = kExact ? static_cast<T>(1.0 / double(t.stats_count)) : T(1);
  double dev = 0.0, var_sum = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const T d = P.g[i] + wd * P.p[i];
    const T mu = P.s1[i] * inv_n;
    const T var = P.s2[i] * inv_n - mu * mu;
    dev += static_cast<double>((d - mu) * (d - mu));
    var_sum += static_cast<double>(std::max(var, T(0)));
  }
  return {dev, var_sum};
}

template <typename T, bool kPerElement, bool kExact>
double run(GradQueueTensor& t, const GradQueueStepConfig& c) {
  Ptrs<T> P{t.param.data_ptr<T>(), t.grad.data_ptr<T>(),
            t.momentum.defined() ? t.momentum.data_ptr<T>() : nullptr,
            t.s1.data_ptr<T>(), t.s2.data_ptr<T>(),
            t.slot.defined() ? t.slot.data_ptr<T>() : nullptr,
            t.old.defined() ? t.old.const_data_ptr<T>() : nullptr};
  const int64_t n = t.param.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool stats = t.stats_count > 0;
  double rho_tensor = 1.0;
  if (!kPerElement && stats) {
    std::vector<std::pair<double, double>> part(blocks);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        part[b] = tensor_moments<T, kExact>(P, b * kBlock, std::min(n, (b + 1) * kBlock), t, c);
    });
    double dev = 0.0, var = 0.0;
    for (const auto& [a, v] : part) dev += a, var += v;
    rho_tensor = clip_rho<T>(std::sqrt(dev) / (std::sqrt(var) + c.eps), c);
  }
  std::vector<double> rho_part(blocks, 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      rho_part[b] = update_range<T, kPerElement, kExact>(P, b * kBlock, std::min(n, (b + 1) * kBlock), t, c,
                                                          stats, rho_tensor);
  });
  if (!kPerElement) return rho_tensor * static_cast<double>(n);
  double s = 0.0;
  for (double r : rho_part) s += r;
  return s;
}

}  // namespace

double gradqueue_step_(GradQueueTensor& t, const GradQueueStepConfig& c) {
  const auto& p = t.param;
  TORCH_CHECK(p.defined() && t.grad.defined() && t.s1.defined() && t.s2.defined(),
              "gradqueue_step_: param, grad, s1 and s2 must be defined");
  const bool exact = t.ema_rate == 0.0;
  TORCH_CHECK(!exact || t.slot.defined(), "gradqueue_step_: exact storage needs the queue slot");
  TORCH_CHECK(c.momentum == 0.0 || t.momentum.defined(), "gradqueue_step_: momentum buffer is undefined");
  TORCH_CHECK(p.device().is_cpu(), "gradqueue_step_: the CPU path got a tensor on ", p.device());
  for (const at::Tensor* x : {&t.grad, &t.momentum, &t.s1, &t.s2, &t.slot, &t.old}) {
    if (!x->defined()) continue;
    TORCH_CHECK(x->device() == p.device() && x->scalar_type() == p.scalar_type(),
                "gradqueue_step_: operand on ", x->device(), " with dtype ", x->scalar_type(),
                " does not match the parameter (", p.device(), ", ", p.scalar_type(), ")");
    TORCH_CHECK(x->numel() == p.numel() && x->is_contiguous(), "gradqueue_step_: operand of ", x->numel(),
                " elements (contiguous: ", x->is_contiguous(), ") for a parameter of ", p.numel());
  }
  TORCH_CHECK(p.is_contiguous(), "gradqueue_step_: the parameter must be contiguous");
  TORCH_CHECK(t.stats_count >= 0, "gradqueue_step_: stats_count must be >= 0, got ", t.stats_count);
  double out = 0.0;
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gradqueue_step_", [&] {
    if (c.per_element) {
      out = exact ? run<scalar_t, true, true>(t, c) : run<scalar_t, true, false>(t, c);
    } else {
      out = exact ? run<scalar_t, false, true>(t, c) : run<scalar_t, false, false>(t, c);
    }
  });
  return out;
}

}  // namespace sgdx::ops

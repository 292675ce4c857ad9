#pragma once
// The GradQueue-SGDM rule of one element (sgdx/optim/gradqueue.h), shared by the
// CPU kernel and the fused CUDA kernel. The window statistics are kept in
// Welford form, so that a gradient whose spread is small against its mean keeps
// its variance (no S2/n - mu^2 cancellation):
//   exact storage: S1 = window mean mu (float64), S2 = M2 = sum over the window of
//                  (x - mu)^2 (variance M2 / n);
//   ema storage:   S1 = running mean, S2 = running variance.
// S2, the ema mean and the queue rows are float32 for half/bfloat16 parameters
// (ops::gradqueue_stats_dtype), float64 for float64 parameters.
#include <algorithm>
#include <cmath>

#include "sgdx/detail/philox.h"  // SGDX_HOST_DEVICE

namespace sgdx::detail {

/// Pushes x into an exact window (mean mu, M2 m2) of n entries, dropping `o` when the
/// window is full (remove_old: n stays, else n becomes n + 1); inv_n is 1 / n after.
/// The mean has type M (float64 for exact storage: a sliding window's rounding errors
/// do not decay, they walk); the M2 increment is formed in M and rounded once.
template <typename T, typename M>
SGDX_HOST_DEVICE void window_push(M& mu, T& m2, T x, T o, bool remove_old, M inv_n) {
  const M xm = static_cast<M>(x);
  if (remove_old) {
    const M om = static_cast<M>(o);
    const M mu_new = mu + (xm - om) * inv_n;
    m2 = static_cast<T>(static_cast<M>(m2) + (xm - om) * ((xm - mu_new) + (om - mu)));
    mu = mu_new;
  } else {
    const M dx = xm - mu;
    mu += dx * inv_n;
    m2 = static_cast<T>(static_cast<M>(m2) + dx * (xm - mu));
  }
  m2 = m2 > T(0) ? m2 : T(0);  // rounding only; M2 >= 0
}

/// Running moments with rate r: mu += r (x - mu), var = (1 - r)(var + r (x - mu)^2)
/// (rounding errors decay with the moments: float32 suffices).
template <typename T>
SGDX_HOST_DEVICE void ema_push(T& mu, T& var, T x, T rate) {
  const T dx = x - mu;
  mu += rate * dx;
  var = (T(1) - rate) * (var + rate * dx * dx);
}

/// Scarcity weight of one element from its deviation d - mu and window variance:
/// clip((|d - mu| / (sigma + eps) / sqrt(2/pi))^kappa, rho_min, rho_max).
template <typename T, bool kKappa1>
SGDX_HOST_DEVICE T element_rho(T dev, T var, T eps, T inv_zref, T kappa, T rho_min, T rho_max) {
  const T sigma = std::sqrt(var > T(0) ? var : T(0));
  const T z = std::abs(dev) / (sigma + eps) * inv_zref;
  const T zk = kKappa1 ? z : static_cast<T>(std::pow(z, kappa));
  return zk < rho_min ? rho_min : (zk > rho_max ? rho_max : zk);
}

/// Scarcity weight of a whole tensor from sum (d - mu)^2 and sum sigma^2.
SGDX_HOST_DEVICE double tensor_rho(double dev, double var, double eps, double kappa, double rho_min,
                                   double rho_max) {
  const double z = std::sqrt(dev) / (std::sqrt(var) + eps);
  const double zk = kappa == 1.0 ? z : std::pow(z, kappa);
  return zk < rho_min ? rho_min : (zk > rho_max ? rho_max : zk);
}

enum class MomentumMode { none, heavy_ball, nesterov };

/// torch::optim::SGD's momentum on the weighted gradient gh; returns the step direction.
template <typename T, MomentumMode kMode>
SGDX_HOST_DEVICE T momentum_direction(T& v, T gh, T mom, T damp1, bool first) {
  if constexpr (kMode == MomentumMode::none) {
    return gh;
  } else {
    const T nv = first ? gh : mom * v + damp1 * gh;
    v = nv;
    return kMode == MomentumMode::nesterov ? gh + mom * nv : nv;
  }
}

}  // namespace sgdx::detail

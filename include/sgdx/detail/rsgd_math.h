#pragma once
// The R-SGD update of one element, shared by the CPU kernel and the fused CUDA
// kernel (the ATen composition in src/ops/rsgd_step_aten.cpp is written
// separately from the spec). Rounding policy: no FMA contraction — the CPU
// kernel is compiled with -ffp-contract=off and the device uses round-to-nearest
// intrinsics — so both kernels give bit-identical values for the same draws
// (half/bfloat16: math in float32, one rounding per stored value).
#include "sgdx/detail/philox.h"

namespace sgdx::detail {

#if defined(__CUDA_ARCH__)
SGDX_HOST_DEVICE float mul_rn(float a, float b) {
  return __fmul_rn(a, b);
}
SGDX_HOST_DEVICE double mul_rn(double a, double b) {
  return __dmul_rn(a, b);
}
SGDX_HOST_DEVICE float add_rn(float a, float b) {
  return __fadd_rn(a, b);
}
SGDX_HOST_DEVICE double add_rn(double a, double b) {
  return __dadd_rn(a, b);
}
#else
template <typename T>
SGDX_HOST_DEVICE T mul_rn(T a, T b) {
  return a * b;
}
template <typename T>
SGDX_HOST_DEVICE T add_rn(T a, T b) {
  return a + b;
}
#endif

/// g = grad + wd * p (wd == 0 adds nothing, so an infinite p does not turn g into NaN);
/// h = g + xi * m;  p -= lr * h;  m = h (accumulated memory) or g (previous gradient).
template <typename T>
SGDX_HOST_DEVICE void rsgd_update(T& p, T grad, T& m, bool xi, T lr, T wd, bool previous) {
  const T g = wd != T(0) ? add_rn(grad, mul_rn(wd, p)) : grad;
  const T h = xi ? add_rn(g, m) : g;
  p = add_rn(p, -mul_rn(lr, h));
  m = previous ? g : h;
}

}  // namespace sgdx::detail

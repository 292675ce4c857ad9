#pragma once
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11): a counter-based generator, so a draw is a pure function of
// (key, counter). CPU and CUDA code share this header, which is what makes the
// CPU reference path and the fused kernels produce the same Bernoulli stream.
#include <cstdint>

#if defined(__CUDACC__)
#define SGDX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SGDX_HOST_DEVICE inline
#endif

namespace sgdx::detail {

struct Philox4x32 {
  uint32_t v[4];
};

SGDX_HOST_DEVICE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  return a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
#endif
}

/// Philox4x32 with 10 rounds on counter c and key (k0, k1).
SGDX_HOST_DEVICE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                          uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kM0, c0, &hi0);
    const uint32_t lo1 = mulhilo32(kM1, c2, &hi1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

/// The R-SGD Bernoulli stream. Element i of tensor `tensor_id` at optimizer
/// step `step` uses word (i mod 4) of Philox(counter = (i/4 low, i/4 high,
/// tensor_id, step), key = seed). Tensor granularity uses element 0's word.
/// A draw is "reinforce" when the 32-bit word is below threshold
/// = round_down(prob * 2^32); threshold 2^32 means always, 0 never.
SGDX_HOST_DEVICE Philox4x32 rsgd_block(uint64_t seed, uint32_t tensor_id, uint32_t step,
                                       uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), tensor_id,
                       step, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

SGDX_HOST_DEVICE uint64_t bernoulli_threshold(double prob) {
  if (!(prob > 0.0)) return 0;
  if (prob >= 1.0) return uint64_t{1} << 32;
  return static_cast<uint64_t>(prob * 4294967296.0);
}

}  // namespace sgdx::detail

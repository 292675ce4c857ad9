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

/// Philox4x32's round multipliers and key increments (the SIMD CPU copies use them too).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

/// Philox4x32 with 10 rounds on counter c and key (k0, k1).
SGDX_HOST_DEVICE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                          uint32_t k1) {
  constexpr uint32_t kM0 = kPhiloxM0, kM1 = kPhiloxM1;
  constexpr uint32_t kW0 = kPhiloxW0, kW1 = kPhiloxW1;
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

/// The uniform double in [0, 1) of k-means++ draw `draw` of (seed, stream)
/// (sgdx::ops::kmeans_uniform; the CUDA k-means kernel draws the same numbers):
/// Philox(counter = (draw low, draw high, stream low, (stream high) ^ "kmea"),
/// key = seed), 53 bits from v[0] >> 5 and v[1] >> 6.
SGDX_HOST_DEVICE double kmeans_uniform(uint64_t seed, uint64_t stream, uint64_t draw) {
  const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(draw), static_cast<uint32_t>(draw >> 32),
                                     static_cast<uint32_t>(stream),
                                     static_cast<uint32_t>(stream >> 32) ^ 0x6b6d6561u,  // "kmea": own stream
                                     static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const uint64_t bits = (static_cast<uint64_t>(r.v[0] >> 5) << 26) | (r.v[1] >> 6);  // 53 bits
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

/// The R-SGD Bernoulli stream. Element i of tensor k at optimizer step t has
/// the uniform 32-bit word U_i = (H_i << 24) | L_i, where
///   H_i = byte (i mod 16) of Philox(counter = (i/16 low, i/16 high, k, t), key = seed),
///         bytes numbered from the least significant byte of v[0] to the most of v[3];
///   L_i = Philox(counter = (i/4 low, (i/4 high) | 2^31, k, t), key = seed).v[i mod 4] >> 8.
/// The draw is xi_i = (U_i < threshold) with threshold = floor(Gamma * 2^32), so
/// Gamma has 32-bit resolution, yet L_i is only needed when H_i == threshold >> 24
/// (probability 1/256): one Philox call serves 16 elements. Tensor granularity
/// uses element 0's draw for the whole tensor.
SGDX_HOST_DEVICE Philox4x32 rsgd_high_block(uint64_t seed, uint32_t tensor_id, uint32_t step,
                                            uint64_t block16) {
  return philox4x32_10(static_cast<uint32_t>(block16), static_cast<uint32_t>(block16 >> 32), tensor_id, step,
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

SGDX_HOST_DEVICE uint32_t rsgd_high_byte(const Philox4x32& r, int byte) {
  return (r.v[byte >> 2] >> (8 * (byte & 3))) & 0xffu;
}

SGDX_HOST_DEVICE uint32_t rsgd_low_bits(uint64_t seed, uint32_t tensor_id, uint32_t step, uint64_t i) {
  const uint64_t block4 = i / 4;
  const auto r =
      philox4x32_10(static_cast<uint32_t>(block4), static_cast<uint32_t>(block4 >> 32) | 0x80000000u,
                    tensor_id, step, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return r.v[i % 4] >> 8;
}

/// xi_i given the element's high byte (threshold strictly inside (0, 2^32)).
SGDX_HOST_DEVICE bool rsgd_resolve(uint32_t high, uint64_t threshold, uint64_t seed, uint32_t tensor_id,
                                   uint32_t step, uint64_t i) {
  const uint32_t t_high = static_cast<uint32_t>(threshold >> 24);
  if (high != t_high) return high < t_high;
  return rsgd_low_bits(seed, tensor_id, step, i) < static_cast<uint32_t>(threshold & 0xffffffu);
}

/// The draw of element i, computed on its own (reference and tensor granularity).
SGDX_HOST_DEVICE bool rsgd_draw(uint64_t seed, uint32_t tensor_id, uint32_t step, uint64_t i,
                                uint64_t threshold) {
  if (threshold == 0) return false;
  if (threshold >= (uint64_t{1} << 32)) return true;
  const auto r = rsgd_high_block(seed, tensor_id, step, i / 16);
  return rsgd_resolve(rsgd_high_byte(r, static_cast<int>(i % 16)), threshold, seed, tensor_id, step, i);
}

SGDX_HOST_DEVICE uint64_t bernoulli_threshold(double prob) {
  if (!(prob > 0.0)) return 0;
  if (prob >= 1.0) return uint64_t{1} << 32;
  return static_cast<uint64_t>(prob * 4294967296.0);
}

}  // namespace sgdx::detail

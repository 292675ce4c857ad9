#pragma once
// The R-SGD stream's high words (sgdx/detail/philox.h, rsgd_high_block) for a
// run of consecutive 16-element blocks, 8 (AVX2) or 16 (AVX-512) Philox
// counters per vector. out[4 b + j] = rsgd_high_block(..., first + b).v[j]:
// the same words as the scalar definition, bit for bit (tests/cpu checks every
// variant against it). Written with intrinsics because the compiler's AVX2
// code for the 32x32->64 multiplies spends most of its time shuffling.
#include <cstdint>

#include "isa_targets.h"
#include "sgdx/detail/philox.h"

#if SGDX_X86_VARIANTS
#include <immintrin.h>
#endif

namespace sgdx::cpu {

using sgdx::detail::kPhiloxM0;
using sgdx::detail::kPhiloxM1;
using sgdx::detail::kPhiloxW0;
using sgdx::detail::kPhiloxW1;

/// Scalar words (the definition; also every variant's tail).
inline void rsgd_high_words_scalar(uint64_t seed, uint32_t tensor_id, uint32_t step, uint64_t first,
                                   int64_t blocks, uint32_t* __restrict out) {
  for (int64_t b = 0; b < blocks; ++b) {
    const auto r = sgdx::detail::rsgd_high_block(seed, tensor_id, step, first + static_cast<uint64_t>(b));
    for (int j = 0; j < 4; ++j) out[4 * b + j] = r.v[j];
  }
}

#if SGDX_X86_VARIANTS

// GCC 12 reports _mm512_undefined's deliberately uninitialised value inside the
// intrinsics (GCC bug 105593, a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Counters (first + lane) split into low and high words, per lane.
template <int kLanes>
inline void block_counters(uint64_t base, uint32_t* lo, uint32_t* hi) {
  for (int l = 0; l < kLanes; ++l) {
    const uint64_t c = base + static_cast<uint64_t>(l);
    lo[l] = static_cast<uint32_t>(c);
    hi[l] = static_cast<uint32_t>(c >> 32);
  }
}

SGDX_TARGET_AVX2 inline void rsgd_high_words_avx2(uint64_t seed, uint32_t tensor_id, uint32_t step,
                                                  uint64_t first, int64_t blocks, uint32_t* __restrict out) {
  const auto seed0 = static_cast<uint32_t>(seed), seed1 = static_cast<uint32_t>(seed >> 32);
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  int64_t b = 0;
  for (; b + 8 <= blocks; b += 8) {
    alignas(32) uint32_t lo[8], hi[8];
    block_counters<8>(first + static_cast<uint64_t>(b), lo, hi);
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(tensor_id)),
            c3 = _mm256_set1_epi32(static_cast<int>(step));
    uint32_t k0 = seed0, k1 = seed1;
    for (int r = 0; r < 10; ++r) {
      // mulhilo: even lanes' 64-bit products directly, odd lanes' after a shift.
      const __m256i e0 = _mm256_mul_epu32(c0, m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(c0, 32), m0);
      const __m256i e1 = _mm256_mul_epu32(c2, m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(c2, 32), m1);
      const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    // 4 x 8 transpose: block-major words.
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    auto* o = reinterpret_cast<__m256i*>(out + 4 * b);
    _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(u0, u1, 0x20));
    _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(u2, u3, 0x20));
    _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(u0, u1, 0x31));
    _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(u2, u3, 0x31));
  }
  rsgd_high_words_scalar(seed, tensor_id, step, first + static_cast<uint64_t>(b), blocks - b, out + 4 * b);
}

SGDX_TARGET_AVX512 inline void rsgd_high_words_avx512(uint64_t seed, uint32_t tensor_id, uint32_t step,
                                                      uint64_t first, int64_t blocks,
                                                      uint32_t* __restrict out) {
  const auto seed0 = static_cast<uint32_t>(seed), seed1 = static_cast<uint32_t>(seed >> 32);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  constexpr __mmask16 kOdd = 0xAAAA;
  int64_t b = 0;
  for (; b + 16 <= blocks; b += 16) {
    alignas(64) uint32_t lo[16], hi[16];
    block_counters<16>(first + static_cast<uint64_t>(b), lo, hi);
    __m512i c0 = _mm512_load_si512(lo), c1 = _mm512_load_si512(hi);
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(tensor_id)),
            c3 = _mm512_set1_epi32(static_cast<int>(step));
    uint32_t k0 = seed0, k1 = seed1;
    for (int r = 0; r < 10; ++r) {
      const __m512i e0 = _mm512_mul_epu32(c0, m0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0, 32), m0);
      const __m512i e1 = _mm512_mul_epu32(c2, m1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2, 32), m1);
      const __m512i lo0 = _mm512_mask_blend_epi32(kOdd, e0, _mm512_slli_epi64(o0, 32));
      const __m512i hi0 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(e0, 32), o0);
      const __m512i lo1 = _mm512_mask_blend_epi32(kOdd, e1, _mm512_slli_epi64(o1, 32));
      const __m512i hi1 = _mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(e1, 32), o1);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32(static_cast<int>(k0)));
      c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    // Per 128-bit lane L, a 4 x 4 transpose leaves block 4L + q in u_q; then
    // a 4 x 4 transpose of the 128-bit lanes puts blocks in order.
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    const __m512i a = _mm512_shuffle_i32x4(u0, u1, 0x44), bb = _mm512_shuffle_i32x4(u0, u1, 0xEE);
    const __m512i c = _mm512_shuffle_i32x4(u2, u3, 0x44), d = _mm512_shuffle_i32x4(u2, u3, 0xEE);
    uint32_t* o = out + 4 * b;
    _mm512_storeu_si512(o + 0, _mm512_shuffle_i32x4(a, c, 0x88));
    _mm512_storeu_si512(o + 16, _mm512_shuffle_i32x4(a, c, 0xDD));
    _mm512_storeu_si512(o + 32, _mm512_shuffle_i32x4(bb, d, 0x88));
    _mm512_storeu_si512(o + 48, _mm512_shuffle_i32x4(bb, d, 0xDD));
  }
  rsgd_high_words_scalar(seed, tensor_id, step, first + static_cast<uint64_t>(b), blocks - b, out + 4 * b);
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // SGDX_X86_VARIANTS

}  // namespace sgdx::cpu

#pragma once
// FNV-1a (Fowler, Noll, Vo): h = (h ^ unit) * prime over the units of the input. The one
// hash of the example programs' stored fingerprints: sgdx-train's checkpoint data
// fingerprints (train/resume.cpp) and sgdx-erm's P* cache keys (erm/pstar_cache.h).
// Both are persisted, so any change of a value here orphans checkpoints or caches.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sgdx_examples {

constexpr uint64_t kFnv1aOffsetBasis = 14695981039346656037ull;
constexpr uint64_t kFnv1aPrime = 1099511628211ull;

/// One step: the unit is a byte in standard FNV-1a, an 8-byte word in fnv1a_words.
constexpr uint64_t fnv1a_mix(uint64_t h, uint64_t unit) {
  return (h ^ unit) * kFnv1aPrime;
}

/// Standard (byte-wise) FNV-1a of `bytes` bytes, continuing from `h`.
inline uint64_t fnv1a(const void* data, size_t bytes, uint64_t h = kFnv1aOffsetBasis) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < bytes; ++i) h = fnv1a_mix(h, p[i]);
  return h;
}

/// The word-wise variant: native-endian 8-byte words, then the tail byte by byte, from `h`.
/// Eight times fewer steps than fnv1a, for hashing whole datasets.
inline uint64_t fnv1a_words(const void* data, size_t bytes, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = fnv1a_mix(h, w);
  }
  return fnv1a(p + i, bytes - i, h);
}

}  // namespace sgdx_examples

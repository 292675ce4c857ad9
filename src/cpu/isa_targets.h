#pragma once
// Function attributes that compile one function for one x86 variant
// (sgdx/cpu_isa.h). A kernel is written once as an inline template and
// instantiated under each attribute; the caller picks the instance by
// sgdx::cpu_isa(). No FMA contraction in any variant (-ffp-contract=off on the
// kernels' files), so every instance rounds alike.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SGDX_X86_VARIANTS 1
#define SGDX_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define SGDX_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define SGDX_X86_VARIANTS 0
#define SGDX_TARGET_AVX2
#define SGDX_TARGET_AVX512
#endif
#define SGDX_ALWAYS_INLINE __attribute__((always_inline)) inline
#define SGDX_NOINLINE __attribute__((noinline))

#pragma once
// Which x86 instruction-set variant sgdx's CPU kernels run (the R-SGD and
// GradQueue steps). Every variant computes bit-identical results; they differ
// only in speed. The best variant the CPU supports is chosen at start-up;
// SGDX_CPU_ISA=baseline|avx2|avx512 (read once, on first use) or set_cpu_isa()
// forces a lower one, so one machine can test and benchmark every variant it
// can run.
#include <string_view>
#include <vector>

#include "sgdx/export.h"

namespace sgdx {

enum class CpuIsa {
  Baseline,  // x86-64 (SSE2) or a non-x86 build: the compiler's code for the target
  Avx2,      // AVX2 + FMA units (FMA is never contracted: results equal the baseline's)
  Avx512,    // AVX-512 F/BW/VL/DQ
};

SGDX_API std::string_view cpu_isa_name(CpuIsa isa);
/// "baseline", "avx2" or "avx512" -> the variant; anything else throws, naming it.
SGDX_API CpuIsa parse_cpu_isa(std::string_view name);
/// Every variant this CPU and this build can run, lowest first.
SGDX_API std::vector<CpuIsa> cpu_isas_supported();
/// The variant the kernels use now.
SGDX_API CpuIsa cpu_isa();
/// Forces a variant (tests, benchmarks); one the CPU cannot run is refused by name.
SGDX_API void set_cpu_isa(CpuIsa isa);

}  // namespace sgdx

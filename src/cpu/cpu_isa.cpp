#include "sgdx/cpu_isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "isa_targets.h"

namespace sgdx {
namespace {

bool cpu_runs(CpuIsa isa) {
#if SGDX_X86_VARIANTS
  switch (isa) {
    case CpuIsa::Baseline:
      return true;
    case CpuIsa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == CpuIsa::Baseline;
#endif
}

CpuIsa best_supported() {
  return cpu_isas_supported().back();
}

// SGDX_CPU_ISA, read once: a bad or unsupported value is refused on first use.
CpuIsa initial_isa() {
  const char* env = std::getenv("SGDX_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_supported();
  const CpuIsa isa = parse_cpu_isa(env);
  TORCH_CHECK(cpu_runs(isa), "SGDX_CPU_ISA=", env, ": this CPU cannot run the ", cpu_isa_name(isa),
              " variant (it runs up to ", cpu_isa_name(best_supported()), ")");
  return isa;
}

std::atomic<CpuIsa>& active() {
  static std::atomic<CpuIsa> isa{initial_isa()};
  return isa;
}

}  // namespace

std::string_view cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Baseline:
      return "baseline";
    case CpuIsa::Avx2:
      return "avx2";
    case CpuIsa::Avx512:
      return "avx512";
  }
  return "unknown";
}

CpuIsa parse_cpu_isa(std::string_view name) {
  for (const CpuIsa isa : {CpuIsa::Baseline, CpuIsa::Avx2, CpuIsa::Avx512})
    if (name == cpu_isa_name(isa)) return isa;
  TORCH_CHECK(false, "unknown CPU ISA variant '", std::string(name), "' (expected baseline, avx2 or avx512)");
}

std::vector<CpuIsa> cpu_isas_supported() {
  std::vector<CpuIsa> out;
  for (const CpuIsa isa : {CpuIsa::Baseline, CpuIsa::Avx2, CpuIsa::Avx512})
    if (cpu_runs(isa)) out.push_back(isa);
  return out;
}

CpuIsa cpu_isa() {
  return active().load(std::memory_order_relaxed);
}

void set_cpu_isa(CpuIsa isa) {
  TORCH_CHECK(cpu_runs(isa), "set_cpu_isa: this CPU cannot run the ", cpu_isa_name(isa),
              " variant (it runs up to ", cpu_isa_name(best_supported()), ")");
  active().store(isa, std::memory_order_relaxed);
}

}  // namespace sgdx

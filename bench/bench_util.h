#pragma once
// Side-by-side timing: ours and the reference alternate in one run, and the
// figure that counts is the ratio of medians (../shared/BENCHMARKS.md).
#include <nlohmann/json.hpp>

#include "sgdx/cpu_isa.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

namespace sgdx::bench {

/// The parameter shapes of a torchvision ResNet-18 (11.7M parameters in 62 tensors).
inline std::vector<std::vector<int64_t>> resnet18_shapes() {
  std::vector<std::vector<int64_t>> s = {{64, 3, 7, 7}, {64}, {64}};
  int64_t in = 64;
  for (int64_t out : {64, 128, 256, 512}) {
    for (int block = 0; block < 2; ++block) {
      const int64_t cin = block == 0 ? in : out;
      s.push_back({out, cin, 3, 3});
      s.push_back({out});
      s.push_back({out});
      s.push_back({out, out, 3, 3});
      s.push_back({out});
      s.push_back({out});
      if (block == 0 && cin != out) {
        s.push_back({out, cin, 1, 1});
        s.push_back({out});
        s.push_back({out});
      }
    }
    in = out;
  }
  s.push_back({1000, 512});
  s.push_back({1000});
  return s;
}

struct Timing {
  double median = 0, min = 0, max = 0;  // seconds
};

inline Timing summarize(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front(), t.back()};
}

inline double seconds_of(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Runs warm-up calls, then `reps` rounds in which every candidate runs once
/// (order rotating), and returns each candidate's timing.
inline std::vector<Timing> compare(const std::vector<std::function<void()>>& candidates, int reps,
                                   int warmup = 3) {
  for (int w = 0; w < warmup; ++w)
    for (const auto& c : candidates) c();
  std::vector<std::vector<double>> times(candidates.size());
  for (int r = 0; r < reps; ++r)
    for (size_t k = 0; k < candidates.size(); ++k) {
      const size_t i = (k + r) % candidates.size();
      times[i].push_back(seconds_of(candidates[i]));
    }
  std::vector<Timing> out;
  for (auto& t : times) out.push_back(summarize(t));
  return out;
}

inline nlohmann::json to_json(const Timing& t) {
  return {{"median_s", t.median}, {"min_s", t.min}, {"max_s", t.max}};
}

/// "cpu: <model name>" from /proc/cpuinfo, for the results' device field.
inline std::string cpu_device_name() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return "cpu: " + line.substr(line.find(':') + 2);
  }
  return "cpu";
}

/// The CPU kernels' variants to time: every one this CPU runs (SGDX_BENCH_ISA=all,
/// the default), or only the one chosen by SGDX_CPU_ISA / the best (SGDX_BENCH_ISA=active).
inline std::vector<sgdx::CpuIsa> bench_isas() {
  const char* env = std::getenv("SGDX_BENCH_ISA");
  if (env != nullptr && std::string(env) == "active") return {sgdx::cpu_isa()};
  return sgdx::cpu_isas_supported();
}

/// {"cpu_isa_best": ..., "cpu_isas_timed": [...]} for a benchmark's JSON.
inline nlohmann::json isa_json(const std::vector<sgdx::CpuIsa>& timed) {
  nlohmann::json names = nlohmann::json::array();
  for (auto isa : timed) names.push_back(std::string(sgdx::cpu_isa_name(isa)));
  return {{"cpu_isa_best", std::string(sgdx::cpu_isa_name(sgdx::cpu_isas_supported().back()))},
          {"cpu_isas_timed", names}};
}

inline void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream(path) << j.dump(2) << "\n";
  std::printf("wrote %s\n", path.c_str());
}

}  // namespace sgdx::bench

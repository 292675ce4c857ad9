#pragma once
// GPU timing for the CUDA benchmarks: candidates measured side by side in one
// run, `inner` calls between device synchronisations.
#include <torch/cuda.h>

#include <functional>
#include <string>
#include <vector>

#include "bench_util.h"
#include "sgdx/config.h"
#if SGDX_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace sgdx::bench {

/// The GPU counterpart of compare(): warm-up calls, then `samples` rounds in which
/// every candidate (order rotating) runs `inner` calls between device
/// synchronisations; returns each candidate's median/min/max seconds per call.
inline std::vector<Timing> compare_cuda(const std::vector<std::function<void()>>& candidates,
                                        int samples = 15, int inner = 10) {
  for (int w = 0; w < 3; ++w)
    for (const auto& f : candidates) f();
  torch::cuda::synchronize();
  std::vector<std::vector<double>> times(candidates.size());
  for (int s = 0; s < samples; ++s) {
    for (size_t k = 0; k < candidates.size(); ++k) {
      const size_t i = (k + s) % candidates.size();
      times[i].push_back(seconds_of([&] {
                           for (int r = 0; r < inner; ++r) candidates[i]();
                           torch::cuda::synchronize();
                         }) /
                         inner);
    }
  }
  std::vector<Timing> out;
  for (auto& t : times) out.push_back(summarize(t));
  return out;
}

inline std::string cuda_device_name() {
#if SGDX_WITH_CUDA
  return at::cuda::getCurrentDeviceProperties()->name;
#else
  return "cuda";
#endif
}

}  // namespace sgdx::bench

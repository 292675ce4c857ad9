#pragma once
// GPU timing for the CUDA benchmarks: median seconds of one call, timing
// `inner` calls between device synchronisations.
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

inline Timing time_cuda(const std::function<void()>& f, int samples = 15, int inner = 10) {
  for (int w = 0; w < 3; ++w) f();
  torch::cuda::synchronize();
  std::vector<double> t;
  for (int s = 0; s < samples; ++s) {
    const double sec = seconds_of([&] {
      for (int i = 0; i < inner; ++i) f();
      torch::cuda::synchronize();
    });
    t.push_back(sec / inner);
  }
  return summarize(t);
}

inline std::string cuda_device_name() {
#if SGDX_WITH_CUDA
  return at::cuda::getCurrentDeviceProperties()->name;
#else
  return "cuda";
#endif
}

}  // namespace sgdx::bench

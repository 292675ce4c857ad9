// GPU: the fused R-SGD step's achieved bandwidth as a fraction of the device's
// measured copy bandwidth at 10^8 parameters, beside PyTorch's fused SGD
// (at::_fused_sgd_, momentum) in the same run. Skips without a CUDA device.
#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_cuda_util.h"
#include "sgdx/config.h"
#include "sgdx/ops/rsgd_step.h"

using sgdx::bench::compare_cuda;

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_rsgd_step_cuda.json";
  const int64_t n = argc > 2 ? std::stoll(argv[2]) : 100'000'000;
  if (!SGDX_WITH_CUDA || !torch::cuda::is_available()) {
    std::printf("bench_rsgd_step_cuda: no CUDA device (or sgdx built without CUDA): skipped\n");
    nlohmann::json j;
    j["name"] = "rsgd_step_cuda";
    j["skipped"] = true;
    sgdx::bench::write_json(out, j);
    return 0;
  }
  const auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat);
  // Ceiling: a large device-to-device copy (bytes read + written).
  auto src = torch::randn({n}, opts), dst = torch::empty({n}, opts);
  // Ten tensors of n/10 parameters each, as a model would have.
  std::vector<at::Tensor> p, g, m, p2, g2, m2;
  for (int k = 0; k < 10; ++k) {
    p.push_back(torch::randn({n / 10}, opts));
    g.push_back(torch::randn({n / 10}, opts));
    m.push_back(torch::randn({n / 10}, opts));
    p2.push_back(torch::randn({n / 10}, opts));
    g2.push_back(torch::randn({n / 10}, opts));
    m2.push_back(torch::randn({n / 10}, opts));
  }
  std::vector<int64_t> ids = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, steps(10, 5);
  std::vector<double> half(10, 0.5), one(10, 1.0);
  sgdx::ops::RSGDStepConfig c;
  c.lr = 1e-9;
  const auto t =
      compare_cuda({[&] { dst.copy_(src); }, [&] { sgdx::ops::rsgd_step_(p, g, m, ids, steps, half, c); },
                    [&] { sgdx::ops::rsgd_step_(p, g, m, ids, steps, one, c); },
                    [&] {
                      at::_fused_sgd_(p2, g2, m2, /*weight_decay=*/0.0, /*momentum=*/0.9, /*lr=*/1e-9,
                                      /*dampening=*/0.0, /*nesterov=*/false, /*maximize=*/false,
                                      /*is_first_step=*/false);
                    }});
  const auto &copy = t[0], &rsgd_draw = t[1], &rsgd_fixed = t[2], &fused_sgd = t[3];
  const double copy_bw = 2.0 * 4.0 * double(n) / copy.median;
  const double bytes = 20.0 * double(10 * (n / 10));  // read p, g, m; write p, m
  auto frac = [&](const sgdx::bench::Timing& t) { return bytes / t.median / copy_bw; };
  const std::string name = sgdx::bench::cuda_device_name();
  std::printf("device %s, %lld parameters, copy bandwidth %.0f GB/s\n", name.c_str(),
              static_cast<long long>(n), copy_bw / 1e9);
  std::printf("%-32s %10s %12s\n", "", "median ms", "of copy BW");
  std::printf("%-32s %10.3f %12.3f\n", "sgdx R-SGD (Gamma=0.5, draws)", 1e3 * rsgd_draw.median,
              frac(rsgd_draw));
  std::printf("%-32s %10.3f %12.3f\n", "sgdx R-SGD (Gamma=1, no draws)", 1e3 * rsgd_fixed.median,
              frac(rsgd_fixed));
  std::printf("%-32s %10.3f %12.3f\n", "at::_fused_sgd_ (momentum)", 1e3 * fused_sgd.median, frac(fused_sgd));
  std::printf("ratio R-SGD / _fused_sgd_: %.3f (target: bandwidth fraction >= 0.8)\n",
              rsgd_draw.median / fused_sgd.median);
  sgdx::bench::write_json(out, {{"name", "rsgd_step_cuda"},
                                {"device", name},
                                {"parameters", n},
                                {"copy_bandwidth_GBps", copy_bw / 1e9},
                                {"copy", sgdx::bench::to_json(copy)},
                                {"rsgd_draws", sgdx::bench::to_json(rsgd_draw)},
                                {"rsgd_no_draws", sgdx::bench::to_json(rsgd_fixed)},
                                {"reference_fused_sgd", sgdx::bench::to_json(fused_sgd)},
                                {"bandwidth_fraction_rsgd_draws", frac(rsgd_draw)},
                                {"bandwidth_fraction_rsgd_no_draws", frac(rsgd_fixed)},
                                {"bandwidth_fraction_fused_sgd", frac(fused_sgd)},
                                {"ratio_vs_fused_sgd", rsgd_draw.median / fused_sgd.median}});
  return 0;
}

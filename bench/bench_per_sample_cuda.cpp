// GPU: the cost of exact per-sample gradient norms on the CIFAR ResNet-style
// net (sgdx::models "resnet", GroupNorm, 3x32x32, batch 128, float32), side by
// side in one run: plain forward+backward, forward+backward+norms with the fused
// kernel (PerSampleBackend::fused_cuda: Linear/Conv2d layers in one launch,
// GroupNorm through ATen), and with the ATen backend. Target (issue #8): fused
// <= 1.1x plain. Also the norms alone after a captured backward. Skips without
// a CUDA device.
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_cuda_util.h"
#include "sgdx/models/models.h"
#include "sgdx/ops/per_sample.h"

using sgdx::bench::compare_cuda;
using sgdx::ops::PerSampleBackend;

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_per_sample_cuda.json";
  const int64_t B = argc > 2 ? std::stoll(argv[2]) : 128;
  if (!SGDX_WITH_CUDA || !torch::cuda::is_available()) {
    std::printf("bench_per_sample_cuda: no CUDA device (or sgdx built without CUDA): skipped\n");
    sgdx::bench::write_json(out, {{"name", "per_sample_cuda"}, {"skipped", true}});
    return 0;
  }
  torch::manual_seed(0);
  auto model = sgdx::models::make_model("resnet", {3, 32, 32}, 10);
  model->to(torch::kCUDA);
  auto x = torch::randn({B, 3, 32, 32}, torch::kCUDA);
  auto y = torch::randint(0, 10, {B}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kLong));
  namespace F = torch::nn::functional;
  auto plain = [&] {
    model->zero_grad();
    F::cross_entropy(model->forward(x), y).backward();
  };
  at::Tensor sink;
  auto with_norms = [&](PerSampleBackend backend) {
    model->zero_grad();
    sgdx::ops::PerSampleOptions o;
    o.backend = backend;
    sgdx::ops::PerSampleGradients cap(*model, o);
    auto loss = F::cross_entropy(model->forward(x), y);
    cap.attach(loss, B);
    loss.backward();
    sink = cap.squared_norms();
  };
  const auto t = compare_cuda({plain, [&] { with_norms(PerSampleBackend::fused_cuda); },
                               [&] { with_norms(PerSampleBackend::aten); }});
  const auto &t_plain = t[0], &t_fused = t[1], &t_aten = t[2];
  // The norms alone, from one captured backward.
  sgdx::ops::PerSampleGradients fused_cap(*model, {.backend = PerSampleBackend::fused_cuda});
  sgdx::ops::PerSampleGradients aten_cap(*model, {.backend = PerSampleBackend::aten});
  {
    model->zero_grad();
    auto loss = F::cross_entropy(model->forward(x), y);
    fused_cap.attach(loss, B);
    aten_cap.attach(loss, B);
    loss.backward();
  }
  const auto n =
      compare_cuda({[&] { sink = fused_cap.squared_norms(); }, [&] { sink = aten_cap.squared_norms(); }});
  const auto &n_fused = n[0], &n_aten = n[1];
  const double max_rel =
      ((fused_cap.squared_norms().to(torch::kDouble) - aten_cap.squared_norms().to(torch::kDouble)).abs() /
       aten_cap.squared_norms().to(torch::kDouble).abs().clamp_min(1e-30))
          .max()
          .item<double>();
  const std::string name = sgdx::bench::cuda_device_name();
  std::printf("device %s, resnet (GroupNorm) 3x32x32, batch %lld, float32\n", name.c_str(),
              static_cast<long long>(B));
  std::printf("%-40s %10s %10s\n", "", "median ms", "vs plain");
  std::printf("%-40s %10.3f %10.2f\n", "forward+backward", 1e3 * t_plain.median, 1.0);
  std::printf("%-40s %10.3f %10.2f\n", "forward+backward+norms (fused kernel)", 1e3 * t_fused.median,
              t_fused.median / t_plain.median);
  std::printf("%-40s %10.3f %10.2f\n", "forward+backward+norms (ATen)", 1e3 * t_aten.median,
              t_aten.median / t_plain.median);
  std::printf("%-40s %10.3f %10s\n", "norms alone (fused kernel)", 1e3 * n_fused.median, "");
  std::printf("%-40s %10.3f %10s\n", "norms alone (ATen)", 1e3 * n_aten.median, "");
  std::printf("max relative difference fused vs ATen: %.2e; target: fused <= 1.1x plain\n", max_rel);
  sgdx::bench::write_json(out, {{"name", "per_sample_cuda"},
                                {"device", name},
                                {"batch", B},
                                {"model", "resnet"},
                                {"forward_backward", sgdx::bench::to_json(t_plain)},
                                {"forward_backward_norms_fused", sgdx::bench::to_json(t_fused)},
                                {"forward_backward_norms_aten", sgdx::bench::to_json(t_aten)},
                                {"norms_fused", sgdx::bench::to_json(n_fused)},
                                {"norms_aten", sgdx::bench::to_json(n_aten)},
                                {"ratio_fused_vs_plain", t_fused.median / t_plain.median},
                                {"ratio_aten_vs_plain", t_aten.median / t_plain.median},
                                {"max_relative_difference", max_rel}});
  return 0;
}

// R-SGD step vs LibTorch's SGD with momentum (its per-tensor loop) and an
// at::_foreach_ composition of heavy-ball SGD, on the parameter set of a
// ResNet-18 (11.7M parameters in 62 tensors), one run, ratios of medians.
#include <ATen/ATen.h>
#include <torch/optim/sgd.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_util.h"
#include "sgdx/config.h"
#include "sgdx/optim/rsgd.h"

namespace {

std::vector<torch::Tensor> make_params(torch::Device device) {
  std::vector<torch::Tensor> ps;
  for (auto& shape : sgdx::bench::resnet18_shapes()) {
    auto p = torch::randn(shape, torch::TensorOptions().device(device)).requires_grad_();
    p.mutable_grad() = torch::randn_like(p);
    ps.push_back(p);
  }
  return ps;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_rsgd_step.json";
  const int reps = argc > 2 ? std::stoi(argv[2]) : 30;
  torch::manual_seed(0);
  const torch::Device device(torch::kCPU);
  auto p_rsgd = make_params(device), p_rsgd_half = make_params(device), p_sgd = make_params(device),
       p_foreach = make_params(device), p_rsgd_one = make_params(device);
  int64_t n = 0;
  for (auto& p : p_sgd) n += p.numel();
  sgdx::optim::RSGD rsgd(p_rsgd, sgdx::optim::RSGDOptions(1e-6).gamma(0.999));
  // Gamma = 0.5 at every step: a real Bernoulli draw for every element.
  sgdx::optim::RSGD rsgd_mid(p_rsgd_half,
                             sgdx::optim::RSGDOptions(1e-6).gamma(0.5).gamma0(1.0).max_prob(0.5));
  // gamma0 = 0: Gamma = 1 at every step, no draws (one fused pass, the floor).
  sgdx::optim::RSGD rsgd_one(p_rsgd_one, sgdx::optim::RSGDOptions(1e-6).gamma0(0.0));
  torch::optim::SGD sgd(p_sgd, torch::optim::SGDOptions(1e-6).momentum(0.9));
  std::vector<at::Tensor> fp, fg, fb;
  for (auto& p : p_foreach) {
    fp.push_back(p.detach());
    fg.push_back(p.grad());
    fb.push_back(torch::zeros_like(p));
  }
  // Put every optimizer past its first (lazy-state) step.
  rsgd.step();
  rsgd_mid.step();
  rsgd_one.step();
  sgd.step();
  auto foreach_sgdm = [&] {
    at::_foreach_mul_(fb, 0.9);
    at::_foreach_add_(fb, fg);
    at::_foreach_add_(fp, fb, -1e-6);
  };
  auto t = sgdx::bench::compare(
      {[&] { rsgd_mid.step(); }, [&] { sgd.step(); }, [&] { foreach_sgdm(); }, [&] { rsgd_one.step(); }},
      reps);
  const double ratio_sgd = t[0].median / t[1].median, ratio_foreach = t[0].median / t[2].median;
  const double ratio_nodraw = t[3].median / t[1].median;
  std::printf("R-SGD step, ResNet-18 parameter set: %lld parameters in %zu tensors, %d threads, %d reps\n",
              static_cast<long long>(n), p_sgd.size(), at::get_num_threads(), reps);
  std::printf("%-34s %10s %10s %10s\n", "", "median ms", "min ms", "max ms");
  const char* names[] = {"sgdx RSGD (Gamma=0.5, element)", "torch::optim::SGD momentum 0.9",
                         "_foreach_ heavy ball", "sgdx RSGD (Gamma=1, no draws)"};
  for (int i = 0; i < 4; ++i)
    std::printf("%-34s %10.2f %10.2f %10.2f\n", names[i], 1e3 * t[i].median, 1e3 * t[i].min, 1e3 * t[i].max);
  std::printf("ratio RSGD / torch SGD(momentum): %.3f (target <= 1.2)\n", ratio_sgd);
  std::printf("ratio RSGD / _foreach_ heavy ball: %.3f\n", ratio_foreach);
  std::printf("ratio RSGD without draws (Gamma=1) / torch SGD(momentum): %.3f\n", ratio_nodraw);
  nlohmann::json j = {{"name", "rsgd_step_resnet18"},
                      {"device", sgdx::bench::cpu_device_name()},
                      {"threads", at::get_num_threads()},
                      {"parameters", n},
                      {"tensors", p_sgd.size()},
                      {"reps", reps},
                      {"rsgd", sgdx::bench::to_json(t[0])},
                      {"reference_torch_sgd_momentum", sgdx::bench::to_json(t[1])},
                      {"reference_foreach_heavy_ball", sgdx::bench::to_json(t[2])},
                      {"rsgd_no_draws", sgdx::bench::to_json(t[3])},
                      {"ratio_vs_torch_sgd_momentum", ratio_sgd},
                      {"ratio_vs_foreach", ratio_foreach},
                      {"ratio_no_draws_vs_torch_sgd_momentum", ratio_nodraw},
                      {"bytes_per_param_floor", 20}};
  sgdx::bench::write_json(out, j);
  return 0;
}

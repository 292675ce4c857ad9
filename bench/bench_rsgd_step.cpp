// R-SGD step vs LibTorch's SGD with momentum (its per-tensor loop) and an
// at::_foreach_ composition of heavy-ball SGD, on the parameter set of a
// ResNet-18 (11.7M parameters in 62 tensors), one run, ratios of medians.
#include <ATen/ATen.h>
#include <torch/optim/sgd.h>
#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <string>

#include "bench_util.h"
#include "sgdx/config.h"
#include "sgdx/cpu_isa.h"
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
  // One run: the references, then R-SGD under every x86 variant this CPU runs.
  const auto isas = sgdx::bench::bench_isas();
  std::vector<std::function<void()>> candidates = {[&] { sgd.step(); }, [&] { foreach_sgdm(); }};
  for (auto isa : isas) {
    candidates.emplace_back([&, isa] {
      sgdx::set_cpu_isa(isa);
      rsgd_mid.step();
    });
    candidates.emplace_back([&, isa] {
      sgdx::set_cpu_isa(isa);
      rsgd_one.step();
    });
  }
  auto t = sgdx::bench::compare(candidates, reps);
  std::printf(
      "R-SGD step, ResNet-18 parameter set: %lld parameters in %zu tensors, %d threads, %d reps (%s)\n",
      static_cast<long long>(n), p_sgd.size(), at::get_num_threads(), reps,
      sgdx::bench::cpu_device_name().c_str());
  std::printf("%-40s %10s %10s %10s %8s\n", "", "median ms", "min ms", "max ms", "/ SGDM");
  auto row = [&](const std::string& what, const sgdx::bench::Timing& x) {
    std::printf("%-40s %10.2f %10.2f %10.2f %8.3f\n", what.c_str(), 1e3 * x.median, 1e3 * x.min, 1e3 * x.max,
                x.median / t[0].median);
  };
  row("torch::optim::SGD momentum 0.9", t[0]);
  row("_foreach_ heavy ball", t[1]);
  nlohmann::json variants;
  for (size_t v = 0; v < isas.size(); ++v) {
    const std::string isa(sgdx::cpu_isa_name(isas[v]));
    const auto& mid = t[2 + 2 * v];
    const auto& one = t[3 + 2 * v];
    row("sgdx RSGD [" + isa + "] Gamma=0.5, element", mid);
    row("sgdx RSGD [" + isa + "] Gamma=1, no draws", one);
    variants[isa] = {{"rsgd", sgdx::bench::to_json(mid)},
                     {"rsgd_no_draws", sgdx::bench::to_json(one)},
                     {"ratio_vs_torch_sgd_momentum", mid.median / t[0].median},
                     {"ratio_vs_foreach", mid.median / t[1].median},
                     {"ratio_no_draws_vs_torch_sgd_momentum", one.median / t[0].median}};
  }
  std::printf("targets: RSGD / SGDM <= 1.0, no draws / SGDM <= 0.9, on every variant\n");
  nlohmann::json j = {{"name", "rsgd_step_resnet18"},
                      {"device", sgdx::bench::cpu_device_name()},
                      {"threads", at::get_num_threads()},
                      {"parameters", n},
                      {"tensors", p_sgd.size()},
                      {"reps", reps},
                      {"reference_torch_sgd_momentum", sgdx::bench::to_json(t[0])},
                      {"reference_foreach_heavy_ball", sgdx::bench::to_json(t[1])},
                      {"variants", variants},
                      {"bytes_per_param_floor", 20}};
  j.update(sgdx::bench::isa_json(isas));
  sgdx::bench::write_json(out, j);
  return 0;
}

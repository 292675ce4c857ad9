// GPU: the fused GradQueue-SGDM step's achieved bandwidth as a fraction of the
// device's measured copy bandwidth at 10^8 parameters (ten tensors), beside
// PyTorch's fused SGD (at::_fused_sgd_, momentum) in the same run. Bytes per
// parameter: element/exact 44 (read p, g, v, S1, S2, leaving row; write p, v,
// S1, S2, new row), tensor/exact 60 (plus the moments pass reading p, g, S1, S2),
// element/ema 36, fused SGD 20. Skips without a CUDA device.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_cuda_util.h"
#include "sgdx/ops/gradqueue_step.h"

using sgdx::bench::compare_cuda;

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_gradqueue_cuda.json";
  const int64_t n = argc > 2 ? std::stoll(argv[2]) : 100'000'000;
  if (!SGDX_WITH_CUDA || !torch::cuda::is_available()) {
    std::printf("bench_gradqueue_cuda: no CUDA device (or sgdx built without CUDA): skipped\n");
    sgdx::bench::write_json(out, {{"name", "gradqueue_step_cuda"}, {"skipped", true}});
    return 0;
  }
  const auto opts = torch::TensorOptions().device(torch::kCUDA).dtype(torch::kFloat);
  auto src = torch::randn({n}, opts), dst = torch::empty({n}, opts);
  const int64_t per = n / 10, q = 8;
  struct Set {
    std::vector<at::Tensor> p, g, v, s1, s2, queue;
  };
  auto make = [&](bool queue) {
    Set s;
    for (int k = 0; k < 10; ++k) {
      s.p.push_back(torch::randn({per}, opts));
      s.g.push_back(torch::randn({per}, opts));
      s.v.push_back(torch::randn({per}, opts));
      s.s1.push_back(torch::randn({per}, opts));
      s.s2.push_back(torch::rand({per}, opts) + 1);
      if (queue) s.queue.push_back(torch::randn({q, per}, opts));
    }
    return s;
  };
  auto elem = make(true), tens = make(true), ema = make(false), sgd = make(false);
  int64_t head = 0;
  auto views = [&](Set& s, bool exact) {
    std::vector<sgdx::ops::GradQueueTensor> ts;
    for (int k = 0; k < 10; ++k) {
      sgdx::ops::GradQueueTensor t;
      t.param = s.p[k];
      t.grad = s.g[k];
      t.momentum = s.v[k];
      t.s1 = s.s1[k];
      t.s2 = s.s2[k];
      if (exact) {
        t.slot = s.queue[k][head % q];
        t.old = s.queue[k][(head + 1) % q];
      } else {
        t.ema_rate = 0.125;
      }
      t.count = 8;
      t.scarcity = true;
      ts.push_back(t);
    }
    return ts;
  };
  sgdx::ops::GradQueueStepConfig c;
  c.lr = 1e-9;
  c.momentum = 0.9;
  auto step = [&](Set& s, bool exact, bool per_element) {
    c.per_element = per_element;
    auto ts = views(s, exact);
    sgdx::ops::gradqueue_step_cuda_(ts, c);
    ++head;
  };
  const auto t =
      compare_cuda({[&] { dst.copy_(src); }, [&] { step(elem, true, true); },
                    [&] { step(tens, true, false); }, [&] { step(ema, false, true); },
                    [&] { at::_fused_sgd_(sgd.p, sgd.g, sgd.v, 0.0, 0.9, 1e-9, 0.0, false, false, false); }});
  const auto &copy = t[0], &t_elem = t[1], &t_tens = t[2], &t_ema = t[3], &t_sgd = t[4];
  const double copy_bw = 2.0 * 4.0 * double(n) / copy.median;
  const double P = double(10 * per);
  auto frac = [&](const sgdx::bench::Timing& t, double bytes) { return bytes * P / t.median / copy_bw; };
  const std::string name = sgdx::bench::cuda_device_name();
  std::printf("device %s, %lld parameters, copy bandwidth %.0f GB/s\n", name.c_str(),
              static_cast<long long>(n), copy_bw / 1e9);
  std::printf("%-34s %10s %12s %10s\n", "", "median ms", "of copy BW", "vs fused");
  std::printf("%-34s %10.3f %12.3f %10.2f\n", "GQ element, exact (44 B/param)", 1e3 * t_elem.median,
              frac(t_elem, 44), t_elem.median / t_sgd.median);
  std::printf("%-34s %10.3f %12.3f %10.2f\n", "GQ tensor, exact (60 B/param)", 1e3 * t_tens.median,
              frac(t_tens, 60), t_tens.median / t_sgd.median);
  std::printf("%-34s %10.3f %12.3f %10.2f\n", "GQ element, ema (36 B/param)", 1e3 * t_ema.median,
              frac(t_ema, 36), t_ema.median / t_sgd.median);
  std::printf("%-34s %10.3f %12.3f %10.2f\n", "at::_fused_sgd_ (20 B/param)", 1e3 * t_sgd.median,
              frac(t_sgd, 20), 1.0);
  std::printf("target: bandwidth fraction >= 0.8\n");
  sgdx::bench::write_json(out, {{"name", "gradqueue_step_cuda"},
                                {"device", name},
                                {"parameters", n},
                                {"copy_bandwidth_GBps", copy_bw / 1e9},
                                {"copy", sgdx::bench::to_json(copy)},
                                {"gq_element_exact", sgdx::bench::to_json(t_elem)},
                                {"gq_tensor_exact", sgdx::bench::to_json(t_tens)},
                                {"gq_element_ema", sgdx::bench::to_json(t_ema)},
                                {"reference_fused_sgd", sgdx::bench::to_json(t_sgd)},
                                {"bandwidth_fraction_element_exact", frac(t_elem, 44)},
                                {"bandwidth_fraction_tensor_exact", frac(t_tens, 60)},
                                {"bandwidth_fraction_element_ema", frac(t_ema, 36)},
                                {"bandwidth_fraction_fused_sgd", frac(t_sgd, 20)}});
  return 0;
}

// GradQueue-SGDM benchmarks, ratios of medians from one run:
//  1. the plain step (fused CPU kernel) vs torch::optim::SGD with momentum on the
//     parameter set of a ResNet-18 (11.7M parameters), under every x86 variant
//     this CPU runs; the memory-traffic floor of the ratio is 52/20 bytes per
//     parameter for the exact queue (GQ reads p, g, v, S1, S2, the leaving queue
//     row and writes p, v, S1, S2, the new row, with S1 the window mean in
//     float64: 8 bytes) and 36/20 for ema (no queue rows, S1 float32); SGDM
//     reads p, g, v and writes p, v;
//  2. the clustered step (k-means + per-cluster gradients + step) vs a plain
//     forward+backward+SGDM step at batch 512, K = 4, fast path and reference path,
//     on the example MLP and CNN (Fashion-MNIST shapes), and the k-means alone.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <string>

#include "bench_util.h"
#include "sgdx/models/models.h"
#include "sgdx/ops/kmeans.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/gradqueue.h"

namespace {

using sgdx::optim::GradQueueSGDM;
using sgdx::optim::GradQueueSGDMOptions;
namespace F = torch::nn::functional;

std::vector<torch::Tensor> make_params() {
  std::vector<torch::Tensor> ps;
  for (auto& shape : sgdx::bench::resnet18_shapes()) {
    auto p = torch::randn(shape).requires_grad_();
    p.mutable_grad() = torch::randn_like(p);
    ps.push_back(p);
  }
  return ps;
}

nlohmann::json bench_step(int reps) {
  auto p_gq = make_params(), p_gqt = make_params(), p_ema = make_params(), p_sgd = make_params();
  int64_t n = 0;
  for (auto& p : p_sgd) n += p.numel();
  GradQueueSGDM gq(p_gq, GradQueueSGDMOptions(1e-6));
  GradQueueSGDM gqt(p_gqt, GradQueueSGDMOptions(1e-6).granularity(sgdx::optim::GradQueueGranularity::tensor));
  GradQueueSGDM ema(p_ema, GradQueueSGDMOptions(1e-6).storage(sgdx::optim::GradQueueStorage::ema));
  torch::optim::SGD sgd(p_sgd, torch::optim::SGDOptions(1e-6).momentum(0.9));
  // Fill the window (L = q_init = 8): every timed step scores, pushes and drops a row.
  for (int i = 0; i < 10; ++i) gq.step(), gqt.step(), ema.step();
  sgd.step();
  // One run: the reference, then the three GQ configurations under every x86 variant.
  const auto isas = sgdx::bench::bench_isas();
  std::vector<std::function<void()>> candidates = {[&] { sgd.step(); }};
  for (auto isa : isas)
    for (GradQueueSGDM* o : {&gq, &gqt, &ema})
      candidates.emplace_back([o, isa] {
        sgdx::set_cpu_isa(isa);
        o->step();
      });
  auto t = sgdx::bench::compare(candidates, reps);
  std::printf(
      "\n1. GradQueue-SGDM step, ResNet-18 parameter set: %lld parameters in %zu tensors, %d threads, %d "
      "reps\n",
      static_cast<long long>(n), p_sgd.size(), at::get_num_threads(), reps);
  std::printf("%-44s %10s %10s %10s %8s\n", "", "median ms", "min ms", "max ms", "ratio");
  auto row = [&](const std::string& what, const sgdx::bench::Timing& x) {
    std::printf("%-44s %10.2f %10.2f %10.2f %8.2f\n", what.c_str(), 1e3 * x.median, 1e3 * x.min, 1e3 * x.max,
                x.median / t[0].median);
  };
  row("torch::optim::SGD momentum 0.9", t[0]);
  nlohmann::json variants;
  for (size_t v = 0; v < isas.size(); ++v) {
    const std::string isa(sgdx::cpu_isa_name(isas[v]));
    const auto &exact = t[1 + 3 * v], &tensor = t[2 + 3 * v], &ema_t = t[3 + 3 * v];
    row("GQ-SGDM [" + isa + "] element, exact queue", exact);
    row("GQ-SGDM [" + isa + "] tensor, exact", tensor);
    row("GQ-SGDM [" + isa + "] element, ema: no queue", ema_t);
    variants[isa] = {{"gq_element_exact", sgdx::bench::to_json(exact)},
                     {"gq_tensor_exact", sgdx::bench::to_json(tensor)},
                     {"gq_element_ema", sgdx::bench::to_json(ema_t)},
                     {"ratio_element_exact_vs_sgdm", exact.median / t[0].median},
                     {"ratio_tensor_exact_vs_sgdm", tensor.median / t[0].median},
                     {"ratio_element_ema_vs_sgdm", ema_t.median / t[0].median}};
  }
  std::printf(
      "floor ratio (bytes moved): 52/20 = 2.60 exact (float64 mean), 36/20 = 1.80 ema (no queue rows)\n");
  std::printf("state: GQ exact %.1f MiB (queue q_max=32 x params), GQ ema %.1f MiB, SGDM %.1f MiB\n",
              gq.state_bytes() / 1048576.0, ema.state_bytes() / 1048576.0, n * 4 / 1048576.0);
  nlohmann::json j = {{"parameters", n},
                      {"tensors", p_sgd.size()},
                      {"reps", reps},
                      {"reference_torch_sgd_momentum", sgdx::bench::to_json(t[0])},
                      {"variants", variants},
                      {"floor_ratio_exact", 52.0 / 20.0},
                      {"floor_ratio_ema", 36.0 / 20.0},
                      {"state_bytes_exact", gq.state_bytes()},
                      {"state_bytes_ema", ema.state_bytes()},
                      {"param_bytes", n * 4}};
  j.update(sgdx::bench::isa_json(isas));
  return j;
}

nlohmann::json bench_clustered(const std::string& model_name, int64_t B, int64_t K, int reps) {
  torch::manual_seed(1);
  auto x = torch::randn({B, 1, 28, 28});
  auto y = torch::randint(0, 10, {B}, torch::kLong);
  auto make = [&] {
    torch::manual_seed(2);
    return sgdx::models::make_model(model_name, {1, 28, 28}, 10);
  };
  auto m_plain = make(), m_fast = make(), m_ref = make();
  torch::optim::SGD sgdm(m_plain->parameters(), torch::optim::SGDOptions(1e-4).momentum(0.9));
  auto o = GradQueueSGDMOptions(1e-4).clusters(K);
  GradQueueSGDM fast(m_fast->parameters(), o), ref(m_ref->parameters(), o);
  sgdx::ops::PerSampleGradients cap(*m_fast);
  auto plain_step = [&] {
    sgdm.zero_grad();
    F::cross_entropy(m_plain->forward(x), y).backward();
    sgdm.step();
  };
  auto clustered = [&](sgdx::models::Classifier& m, GradQueueSGDM& opt, sgdx::ops::PerSampleGradients* c) {
    opt.zero_grad();
    auto [logits, feats] = m.forward_features(x);
    opt.clustered_step(F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kNone)),
                       feats.detach(), c);
  };
  torch::Tensor feats;
  {
    torch::NoGradGuard ng;
    feats = m_plain->forward_features(x).second;
  }
  uint64_t stream = 0;
  auto kmeans_only = [&] {
    sgdx::ops::KMeansOptions ko;
    ko.stream = stream++;
    sgdx::ops::kmeans(feats, K, ko);
  };
  auto t = sgdx::bench::compare({plain_step, [&] { clustered(*m_fast, fast, &cap); },
                                 [&] { clustered(*m_ref, ref, nullptr); }, kmeans_only},
                                reps);
  std::printf("\n2. clustered step, %s, batch %lld, K = %lld, features d = %lld, %d reps\n",
              model_name.c_str(), static_cast<long long>(B), static_cast<long long>(K),
              static_cast<long long>(feats.size(1)), reps);
  const char* names[] = {"fwd+bwd+SGDM step (plain)", "GQ clustered, fast path",
                         "GQ clustered, reference path", "k-means alone (10 iters max)"};
  std::printf("%-34s %10s %10s %10s %8s\n", "", "median ms", "min ms", "max ms", "ratio");
  for (int i = 0; i < 4; ++i)
    std::printf("%-34s %10.2f %10.2f %10.2f %8.2f\n", names[i], 1e3 * t[i].median, 1e3 * t[i].min,
                1e3 * t[i].max, t[i].median / t[0].median);
  return {{"model", model_name},
          {"batch", B},
          {"clusters", K},
          {"feature_dim", feats.size(1)},
          {"reps", reps},
          {"plain_fwd_bwd_sgdm", sgdx::bench::to_json(t[0])},
          {"clustered_fast", sgdx::bench::to_json(t[1])},
          {"clustered_reference", sgdx::bench::to_json(t[2])},
          {"kmeans", sgdx::bench::to_json(t[3])},
          {"ratio_fast_vs_plain", t[1].median / t[0].median},
          {"ratio_reference_vs_plain", t[2].median / t[0].median},
          {"ratio_kmeans_vs_plain", t[3].median / t[0].median}};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_gradqueue.json";
  const int reps = argc > 2 ? std::stoi(argv[2]) : 20;
  const std::string which = argc > 3 ? argv[3] : "all";
  if (argc > 4 || (argc > 1 && std::string(argv[1]) == "--help") ||
      (which != "all" && which != "step" && which != "clustered")) {
    std::printf("usage: bench_gradqueue [out.json] [reps] [all|step|clustered]\n");
    return argc > 1 && std::string(argv[1]) == "--help" ? 0 : 2;
  }
  torch::manual_seed(0);
  nlohmann::json j = {
      {"name", "gradqueue"}, {"device", sgdx::bench::cpu_device_name()}, {"threads", at::get_num_threads()}};
  if (which != "clustered") j["step_resnet18"] = bench_step(reps);
  if (which != "step") {
    j["clustered"] = nlohmann::json::array();
    j["clustered"].push_back(bench_clustered("mlp", 512, 4, reps));
    j["clustered"].push_back(bench_clustered("mlp", 32, 8, reps));
    j["clustered"].push_back(bench_clustered("cnn", 512, 4, std::max(5, reps / 4)));
  }
  sgdx::bench::write_json(out, j);
  return 0;
}

// Drawing b = 256 of N = 10^7 examples plus 256 score updates per batch:
// sgdx's ImportanceSampler (sum tree) vs torch::multinomial over the N weights
// (what a user would write), and uniform randint as the cost floor, in one run.
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "bench_util.h"
#include "sgdx/data/importance.h"

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "bench_importance_sampler.json";
  const int64_t n = argc > 2 ? std::stoll(argv[2]) : 10'000'000;
  const int64_t b = 256;
  const int reps = 30;
  torch::manual_seed(0);
  auto init = torch::rand({n}, torch::kDouble) + 0.01;

  sgdx::data::ImportanceSamplerOptions o;
  o.mix = 0.1;
  o.batches_per_epoch = 1 << 30;
  sgdx::data::ImportanceSampler sampler(n, o);
  sampler.update(torch::arange(n), init);
  auto weights = init.to(torch::kFloat);
  auto new_scores = torch::rand({b}, torch::kDouble) + 0.01;

  auto ours = [&] {
    sampler.next(b);
    auto batch = sampler.take();
    sampler.update(torch::tensor(batch.indices, torch::kLong), new_scores);
  };
  auto multinomial = [&] {
    auto p = weights * 0.9f / weights.sum() + 0.1f / float(n);  // the same mixture
    auto idx = torch::multinomial(p, b, /*replacement=*/true);
    auto w = 1.0 / (float(n) * p.index_select(0, idx));
    weights.index_put_({idx}, new_scores.to(torch::kFloat));
    (void)w;
  };
  auto uniform = [&] { (void)torch::randint(n, {b}, torch::kLong); };
  auto t = sgdx::bench::compare({ours, multinomial, uniform}, reps);
  const double speedup = t[1].median / t[0].median;
  std::printf("importance sampling, N = %lld, b = %lld, %d threads (%s)\n", static_cast<long long>(n),
              static_cast<long long>(b), at::get_num_threads(), sgdx::bench::cpu_device_name().c_str());
  std::printf("%-44s %12s\n", "per batch (draw + take + 256 updates)", "median us");
  std::printf("%-44s %12.1f\n", "sgdx ImportanceSampler (sum tree)", 1e6 * t[0].median);
  std::printf("%-44s %12.1f\n", "torch::multinomial over N weights", 1e6 * t[1].median);
  std::printf("%-44s %12.1f\n", "uniform randint (floor)", 1e6 * t[2].median);
  std::printf("speed-up vs multinomial: %.1fx (target >= 10x); memory 16 bytes/example (2N doubles)\n",
              speedup);
  sgdx::bench::write_json(out, {{"name", "importance_sampler"},
                                {"device", sgdx::bench::cpu_device_name()},
                                {"threads", at::get_num_threads()},
                                {"N", n},
                                {"batch", b},
                                {"reps", reps},
                                {"sum_tree", sgdx::bench::to_json(t[0])},
                                {"reference_multinomial", sgdx::bench::to_json(t[1])},
                                {"floor_uniform_randint", sgdx::bench::to_json(t[2])},
                                {"speedup_vs_multinomial", speedup},
                                {"bytes_per_example", 16}});
  return 0;
}

#pragma once
// A test problem for the variance-reduced methods and an independent solver.
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <vector>

#include "sgdx/data/libsvm.h"

namespace sgdx::testing {

// L2/L1-regularised logistic regression on unit-norm rows (L_i = 1/4), float64.
struct Logistic {
  at::Tensor a, y;  // [n, d], [n]
  double l1, l2;
  Logistic(int64_t n, int64_t d, double l1_, double l2_, uint64_t seed) : l1(l1_), l2(l2_) {
    torch::manual_seed(seed);
    a = torch::randn({n, d}, torch::kDouble);
    sgdx::data::normalize_rows_(a);
    y = torch::sign(a.mv(torch::randn({d}, torch::kDouble)) + 0.3 * torch::randn({n}, torch::kDouble));
  }
  at::Tensor loss(const at::Tensor& w, const at::Tensor& idx) const {  // F over the rows idx (mean)
    auto ai = a.index_select(0, idx);
    return torch::nn::functional::softplus(-y.index_select(0, idx) * ai.mv(w)).mean();
  }
  double objective(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return loss(w, torch::arange(a.size(0))).item<double>() + l1 * w.abs().sum().item<double>() +
           0.5 * l2 * w.pow(2).sum().item<double>();
  }
  // An independent solver: FISTA with the exact prox, step 1/L, L = 1/4 (unit rows).
  at::Tensor fista(int iters) const {
    const int64_t n = a.size(0);
    auto x = torch::zeros({a.size(1)}, torch::kDouble), z = x.clone();
    double t = 1;
    const double step = 4.0;
    for (int k = 0; k < iters; ++k) {
      auto g = -(a * (y * torch::sigmoid(-y * a.mv(z))).unsqueeze(1)).sum(0) / double(n);
      auto v = z - step * g;
      auto xn = torch::sign(v) * torch::clamp_min(v.abs() - step * l1, 0.0) / (1 + step * l2);
      const double tn = (1 + std::sqrt(1 + 4 * t * t)) / 2;
      z = xn + ((t - 1) / tn) * (xn - x);
      x = xn;
      t = tn;
    }
    return x;
  }
};

// Runs `steps` steps of a closure-driven VR optimizer with b-sized minibatches drawn by a seeded generator.
template <typename Opt, typename Problem>
void run_vr(Opt& opt, const Problem& prob, at::Tensor& w, int steps, std::mt19937_64& rng, int64_t b) {
  const int64_t n = prob.a.size(0);
  opt.set_full_gradient_closure([&] {
    auto l = prob.loss(w, torch::arange(n));
    l.backward();
    return l;
  });
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  for (int s = 0; s < steps; ++s) {
    std::vector<int64_t> idx(b);
    for (auto& i : idx) i = pick(rng);
    auto batch = torch::tensor(idx, torch::kLong);
    opt.step([&] {
      auto l = prob.loss(w, batch);
      l.backward();
      return l;
    });
  }
}

}  // namespace sgdx::testing

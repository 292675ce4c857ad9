#pragma once
// sgdx-erm's problem, elastic-net regularised logistic or least-squares regression on
// LIBSVM data, and its reference optimum P*.
#include <torch/torch.h>

#include <string>

#include "cli.h"

namespace sgdx_erm {

struct Problem {
  at::Tensor a, y;  // float64 [n, d], [n]
  std::string loss;
  double l1 = 0, l2 = 0;
  int64_t n() const { return a.size(0); }
  at::Tensor data_loss(const at::Tensor& w, const at::Tensor& idx) const {
    auto z = a.index_select(0, idx).mv(w);
    auto yi = y.index_select(0, idx);
    if (loss == "squares") return 0.5 * (z - yi).pow(2).mean();
    return torch::nn::functional::softplus(-yi * z).mean();
  }
  double objective(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return data_loss(w, torch::arange(n())).item<double>() + l1 * w.abs().sum().item<double>() +
           0.5 * l2 * w.pow(2).sum().item<double>();
  }
  /// Mean smoothness L-bar = mean_i ||a_i||^2 (x 1/4 for logistic).
  double mean_smoothness() const {
    return a.pow(2).sum(1).mean().item<double>() * (loss == "squares" ? 1.0 : 0.25);
  }
  at::Tensor full_grad(const at::Tensor& w) const {
    auto z = a.mv(w);
    at::Tensor r = loss == "squares" ? (z - y) : -y * torch::sigmoid(-y * z);
    return a.t().mv(r) / double(n());
  }
};

/// The problem the options name: the file read and checked, rows normalised unless
/// --no-normalize, with a finite positive smoothness.
Problem load_problem(const ErmOptions& o);

/// The minibatch size: --batch, else ceil(sqrt(n)); at most n.
int64_t batch_size(const ErmOptions& o, const Problem& p);

struct PStar {
  at::Tensor w;
  double value = 0;
  std::string source;  ///< how it was found, for the report line
};

/// P* and its minimiser: certified Newton-CG or proximal Newton (sgdx/optim/reference_optimum.h),
/// cached per problem in `cache_dir` (empty: no cache).
PStar certified_p_star(const Problem& p, const std::string& cache_dir);

}  // namespace sgdx_erm

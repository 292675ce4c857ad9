#pragma once
// sgdx-erm's problem, elastic-net regularised logistic or least-squares regression on
// LIBSVM data, and its reference optimum P*.
#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "sgdx/data/libsvm.h"
#include "sgdx/optim/reference_optimum.h"

namespace sgdx_erm {

struct Problem {
  at::Tensor a, y;  // float64 [n, d] (dense, or sparse COO when csr is held), [n]
  std::string loss;
  double l1 = 0, l2 = 0;
  /// The rows in CSR when the problem is held sparse (--storage): the lazy sparse methods
  /// read these; `a` is then their sparse COO form (for P*).
  std::optional<sgdx::data::LibsvmCsr> csr;
  bool sparse() const { return csr.has_value(); }
  int64_t n() const { return y.size(0); }
  int64_t d() const { return a.size(1); }
  sgdx::optim::GlmLoss glm_loss() const {
    return loss == "squares" ? sgdx::optim::GlmLoss::squares : sgdx::optim::GlmLoss::logistic;
  }
  /// The minibatch loss the dense optimizers' closures differentiate (dense storage only).
  at::Tensor data_loss(const at::Tensor& w, const at::Tensor& idx) const {
    auto z = a.index_select(0, idx).mv(w);
    auto yi = y.index_select(0, idx);
    if (loss == "squares") return 0.5 * (z - yi).pow(2).mean();
    return torch::nn::functional::softplus(-yi * z).mean();
  }
  double objective(const at::Tensor& w) const;
  /// Mean smoothness L-bar = mean_i ||a_i||^2 (x 1/4 for logistic).
  double mean_smoothness() const;
  at::Tensor full_grad(const at::Tensor& w) const {
    auto z = a.mv(w);
    at::Tensor r = loss == "squares" ? (z - y) : -y * torch::sigmoid(-y * z);
    return a.t().mv(r) / double(n());
  }
};

/// The problem the options name: the file read and checked, rows normalised unless
/// --no-normalize, with a finite positive smoothness; held sparse or dense as --storage
/// says (auto: sparse for data under 25 % non-zeros when every one of `methods` has a sparse form).
Problem load_problem(const ErmOptions& o, const std::vector<std::string>& methods);

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

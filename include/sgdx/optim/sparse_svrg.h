#pragma once
// Proximal SVRG for sparse linear ERM, P(x) = (1/n) sum_i phi(a_i.x; y_i) + l1 |x|_1 + l2/2 |x|^2
// on CSR data, with lazy ("just-in-time") updates: an inner step costs O(nnz of the batch),
// not O(d). The rule is SVRG's (sgdx/optim/svrg.h, snapshot = last):
//   per stage: x~ = x, mu = grad F(x~)                       (full pass, O(nnz))
//   m times:   v = (1/b) sum_{i in I} [phi'(a_i.x) - phi'(a_i.x~)] a_i + mu
//              x = prox_{lr R}(x - lr v)
// A coordinate j that no row of the batch touches moves by the same one-dimensional map
// T_j(z) = prox_{lr R}(z - lr mu_j) every step; it is applied when j is next read (or at
// the stage's end) as k steps at once in closed form (detail::repeated_prox_step), with a
// per-coordinate counter of the steps already applied. The iterates equal the dense
// algorithm's up to rounding.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "sgdx/data/libsvm.h"
#include "sgdx/export.h"
#include "sgdx/optim/reference_optimum.h"

namespace sgdx::optim {

namespace detail {
/// z after k applications of T(z) = prox_{eta R}(z - eta mu) = sign(u) max(|u| - eta l1, 0) /
/// (1 + eta l2), u = z - eta mu, in O(1) whatever k: T is non-decreasing, so the iterates
/// are monotone and cross the three pieces of T (u > eta l1, |u| <= eta l1, u < -eta l1) at
/// most once each; on a piece T is affine and k steps of it have a closed form.
SGDX_API double repeated_prox_step(double z, double eta_mu, double eta_l1, double eta_l2, int64_t k);
}  // namespace detail

struct SparseSVRGOptions {
  double lr = 0.0;
  int64_t b = 1;  ///< minibatch size (the step() batches' size, for the default m)
  int64_t m = 0;  ///< inner steps per stage (< 2^31); 0: ceil(2n / b), as SVRGOptions
  double l1 = 0.0, l2 = 0.0;
  GlmLoss loss = GlmLoss::logistic;
};

class SGDX_API SparseSVRG {
 public:
  /// `data` must outlive the optimizer; labels +1/-1 for the logistic loss.
  SparseSVRG(const data::LibsvmCsr& data, SparseSVRGOptions options);
  /// One inner step on the rows `batch` (row indices; duplicates count twice); a stage
  /// (snapshot and full gradient) starts first when one is due.
  void step(const std::vector<int64_t>& batch);
  /// The iterate x, float64 [d], with every coordinate brought up to date (O(d)).
  at::Tensor weights();
  /// Component-gradient evaluations: n per full gradient, 2 per batch row, as SVRG counts.
  int64_t gradient_evaluations() const { return evaluations_; }
  /// Stages started, the current one included.
  int64_t stage() const { return stage_; }

 private:
  double margin(int64_t row) const;  // a_row . x (coordinates up to date)
  void catch_up(int64_t j);          // x_j to the current inner step
  void start_stage();

  const data::LibsvmCsr& data_;
  SparseSVRGOptions o_;
  int64_t n_, d_, m_;
  const int64_t* indptr_;
  const int64_t* indices_;
  const double* values_;
  const double* labels_;
  // Everything a step reads or writes of coordinate j, in one 32-byte record: a row's
  // columns are scattered over d, and one cache line per column is what a step costs.
  struct Coordinate {
    double x = 0;       // the iterate, current as of inner step `last`
    double mu = 0;      // the stage's full gradient
    double grad = 0;    // the step's batch term (scratch)
    int32_t last = 0;   // the inner step x is current for
    int32_t mark = -1;  // the inner step that last collected j into touched_
  };
  struct FreeDeleter {
    void operator()(Coordinate* p) const;
  };
  std::unique_ptr<Coordinate[], FreeDeleter> c_;  // d records, on huge pages where the kernel allows
  std::vector<double> snapshot_margin_;
  std::vector<int64_t> touched_;
  int64_t inner_ = 0, stage_ = 0, evaluations_ = 0;
  bool started_ = false;
};

}  // namespace sgdx::optim

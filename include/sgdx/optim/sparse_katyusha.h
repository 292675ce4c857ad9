#pragma once
// Katyusha (sgdx/optim/katyusha.h, the same options and rule) on sparse linear ERM in CSR,
// with lazy updates. For a coordinate that no row of the batch touches, v = mu every
// step, and its pair (y, z) moves by
//   x = tau1 z + tau2 x~ + tau3 y,   z' = prox_{alpha R}(z - alpha mu),
//   y' = prox_{eta R}(x - eta mu),    ysum += (1 + alpha l2)^j y'   (j: the inner step)
// With l1 = 0 both proxes are scalings, so the pair moves by one affine map with the
// same 2x2 matrix A for every coordinate: k missed steps are A^k, sum A^i and the two
// weighted sums that feed ysum, read from tables built once per stage (O(m)), so an
// inner step costs O(nnz of the batch). With l1 > 0 the soft threshold of a combination
// of y and z has no closed form found (docs/sparse_vr.md), so missed steps are applied
// one by one: the same O(d) a step as the dense optimizer, with the data held in CSR.
// The iterates equal the dense optimizer's up to rounding.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "sgdx/data/libsvm.h"
#include "sgdx/export.h"
#include "sgdx/optim/katyusha.h"
#include "sgdx/optim/reference_optimum.h"

namespace sgdx::optim {

class SGDX_API SparseKatyusha {
 public:
  /// `data` must outlive the optimizer; options.n must equal the data's rows.
  SparseKatyusha(const data::LibsvmCsr& data, const KatyushaOptions& options, GlmLoss loss);
  /// One inner step on the rows `batch` (options.b() of them, as Katyusha's closure would
  /// average); a stage (snapshot x~ and full gradient) starts first when one is due.
  void step(const std::vector<int64_t>& batch);
  /// y (the parameters of the dense optimizer), float64 [d], every coordinate up to date.
  at::Tensor weights();
  /// n per full gradient, 2 per batch row, as Katyusha counts.
  int64_t gradient_evaluations() const { return evaluations_; }
  /// Stages started, the current one included (as SparseSVRG counts).
  int64_t stage() const { return started_ ? stage_ + 1 : 0; }

 private:
  struct Coordinate {  // what an inner step reads or writes of one column: 64 bytes
    double y = 0, z = 0, xt = 0, mu = 0, ysum = 0;
    double x = 0, grad = 0;  // the step's point and batch term (scratch)
    int32_t last = 0;        // the inner step (y, z, ysum) are current for
    int32_t mark = -1;       // the inner step that last collected j into touched_
  };
  // k missed steps of the l1 = 0 map s' = A s + b on s = (y, z), A upper triangular:
  // A^k, S_k = sum_{i<k} A^i, and the y rows of P_k = sum_{t=1..k} q^(t-1) A^t and
  // Q_k = sum_{t=1..k} q^(t-1) S_t (q = 1 + alpha l2), which give ysum's increment.
  struct Jump {
    double a11 = 1, a12 = 0, a22 = 1, s11 = 0, s12 = 0, s22 = 0, p1 = 0, p2 = 0, q1 = 0, q2 = 0;
  };
  struct FreeDeleter {
    void operator()(Coordinate* p) const;
  };
  void catch_up(int64_t j);  // coordinate j to the current inner step
  void start_stage();
  void end_stage();

  const data::LibsvmCsr& data_;
  KatyushaOptions o_;
  GlmLoss loss_;
  int64_t n_, d_, m_;
  double tau1_ = 0, tau2_ = 0, alpha_ = 0, eta_inv_ = 0, wsum_ = 0;
  const int64_t* indptr_;
  const int64_t* indices_;
  const double* values_;
  const double* labels_;
  std::unique_ptr<Coordinate[], FreeDeleter> c_;  // d records, on huge pages where the kernel allows
  std::vector<Jump> jumps_;                       // index k: k missed steps (l1 = 0 only)
  std::vector<double> weight_;                    // (1 + alpha l2)^j, as the dense step computes it
  std::vector<double> snapshot_margin_;
  std::vector<int64_t> touched_;
  int64_t inner_ = 0, stage_ = 0, evaluations_ = 0;  // stage_: stages completed (Katyusha's s)
  bool started_ = false;
};

}  // namespace sgdx::optim

#pragma once
// DASVRDA (sgdx/optim/dasvrda.h, the same options and rule) on sparse linear ERM in CSR,
// with lazy updates: an inner step costs O(nnz of the batch + log m), not O(d). For a
// coordinate no row of the batch touches, v = mu every step, and the missed steps of
// dual averaging have closed forms (docs/sparse_vr.md): with q_k = k(k+1),
//   q_k gbar_k = q_k0 gbar_k0 + mu (q_k - q_k0)        (the gradient average)
//   z_k = prox_{c_k R}(z0 - c_k gbar_k), c_k = eta q_k / 4   (no recursion)
//   q_k x_k = q_k0 x_k0 + sum_{k0 < i <= k} 2i z_i
// where the sum splits into at most three runs of i on which z_i = (A - C q_i)/(1 + r q_i),
// summed from two prefix tables over the stage's steps (shared by every coordinate), or
// directly for short runs. The iterates equal the dense optimizer's up to rounding.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "sgdx/data/libsvm.h"
#include "sgdx/export.h"
#include "sgdx/optim/dasvrda.h"
#include "sgdx/optim/reference_optimum.h"

namespace sgdx::optim {

class SGDX_API SparseDASVRDA {
 public:
  /// `data` must outlive the optimizer. options: n must equal the data's rows.
  SparseDASVRDA(const data::LibsvmCsr& data, const DASVRDAOptions& options, GlmLoss loss);
  /// One inner step on the rows `batch` (options.batch() of them, as DASVRDA's closure
  /// would average); a stage starts first when one is due.
  void step(const std::vector<int64_t>& batch);
  /// x (the parameters of the dense optimizer), float64 [d], every coordinate up to date.
  at::Tensor weights();
  int64_t gradient_evaluations() const { return evaluations_; }
  int64_t restarts() const { return restarts_; }

 private:
  struct Coordinate {  // what an inner step reads or writes of one column: 64 bytes
    double x = 0, z = 0, z0 = 0, gbar = 0, mu = 0;
    double y = 0, grad = 0;  // the step's point and batch term (scratch)
    int32_t last = 0;        // the inner step (x, z, gbar) are current for
    int32_t mark = -1;
  };
  double prox(double v, double c) const;                            // prox_{c R}
  void catch_up(int64_t j, int64_t k);                              // coordinate j to inner step k
  double z_sum(const Coordinate& c, int64_t k0, int64_t k1) const;  // sum_{k0 < i <= k1} 2i z_i
  void start_outer_loop();
  void start_stage();
  void end_stage();

  const data::LibsvmCsr& data_;
  DASVRDAOptions o_;
  GlmLoss loss_;
  int64_t n_, d_, m_;
  double eta_, gamma_;
  const int64_t* indptr_;
  const int64_t* indices_;
  const double* values_;
  const double* labels_;
  struct FreeDeleter {
    void operator()(Coordinate* p) const;
  };
  std::unique_ptr<Coordinate[], FreeDeleter> c_;     // d records, on huge pages where the kernel allows
  std::vector<double> xt1_, xt2_, zt_, yt_, yprev_;  // the outer loop's points (O(d) per stage)
  std::vector<double> snapshot_margin_;
  std::vector<double> table1_, table2_;  // prefix sums of 2i/(1 + r q_i) and 2i q_i/(1 + r q_i)
  std::vector<int64_t> touched_;
  int64_t k_ = 0, s_ = 1, evaluations_ = 0, restarts_ = 0;
  double theta_prev_ = 0, theta_s_ = 0;
  bool started_ = false, have_yprev_ = false;
};

}  // namespace sgdx::optim

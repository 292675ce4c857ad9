#pragma once
// Reference optimum of elastic-net regularised linear models, certified by a duality gap:
//   P(w) = (1/n) sum_i phi(a_i.w; y_i) + l1 |w|_1 + (l2/2) |w|^2,
//   phi = log(1 + exp(-y z)) (logistic) or (z - y)^2 / 2 (squares).
// l1 = 0: Newton-CG with a line search: CG on H d = -grad P with Hessian-vector products
// H v = A^T diag(phi'') A v / n + l2 v (forcing term min(0.5, sqrt|g|)), Armijo on P; for
// squares one CG solve. l1 > 0: proximal Newton (Lee, Sun & Saunders, SIAM J. Optim. 2014),
// the l1-regularised quadratic model minimised by coordinate descent on an explicit H
// (newGLMNET's inner solver) or by FISTA with Hessian-vector products, then Armijo on P.
// Stops on the duality gap (objective_and_gap), which certifies P(w) - P*.
// The data enter only through products with A and A^T (plus, for dense A with few columns,
// an explicitly formed Hessian that makes each CG product O(d^2)).
#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <utility>

#include "sgdx/export.h"

namespace sgdx::optim {

enum class GlmLoss { logistic, squares };

struct ReferenceOptimumOptions {
  TORCH_ARG(GlmLoss, loss) = GlmLoss::logistic;
  TORCH_ARG(double, l1) = 0;
  TORCH_ARG(double, l2) = 0;
  /// Stop when the duality gap is at most rel_gap * |P(w)|.
  TORCH_ARG(double, rel_gap) = 1e-14;
  TORCH_ARG(int64_t, max_newton) = 500;
  /// CG iterations per Newton step (0: 10 d + 100); CD sweeps 10x, FISTA steps 100x that.
  TORCH_ARG(int64_t, max_cg) = 0;
  /// Form the Hessian explicitly (n d^2 per Newton step) when A is dense and has at most 1024
  /// columns; false: matrix-free Hessian-vector products (the sparse-data path).
  TORCH_ARG(bool, form_hessian) = true;
};

struct ReferenceOptimum {
  at::Tensor w;          ///< the minimiser, float64 [d]
  double objective = 0;  ///< P(w)
  double gap = 0;        ///< duality gap at w: P(w) - P* <= gap (inf where no dual bound exists)
  int64_t newton_iterations = 0, inner_iterations = 0;  ///< inner: CG, CD sweeps or FISTA steps
  SGDX_API bool certified() const;                      ///< gap <= 1e-12 |P(w)|
};

/// Minimises P over float64 w from `w0` (undefined: zero). `a` is float64 [n, d] (dense or
/// sparse COO), `y` float64 [n] (+1/-1 for the logistic loss).
SGDX_API ReferenceOptimum reference_optimum(const at::Tensor& a, const at::Tensor& y,
                                            const ReferenceOptimumOptions& o, const at::Tensor& w0 = {});

/// P(w) and the duality gap at w (an upper bound on P(w) - P*): the Fenchel dual point is
/// u = grad of the loss at Aw, rescaled into the dual's domain where l2 = 0. The gap is
/// infinite only for unregularised least squares with a nonzero gradient.
SGDX_API std::pair<double, double> objective_and_gap(const at::Tensor& a, const at::Tensor& y,
                                                     const at::Tensor& w, const ReferenceOptimumOptions& o);

}  // namespace sgdx::optim

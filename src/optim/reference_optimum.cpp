#include "sgdx/optim/reference_optimum.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace sgdx::optim {
namespace {

// Everything P needs at one w: z = A w, the loss's first and second derivatives per
// sample, the data gradient A^T phi' / n.
struct Point {
  at::Tensor w, z, dphi, ddphi, grad_f;
  double loss = 0, objective = 0;
};

struct Glm {
  const at::Tensor& a;
  const at::Tensor& y;
  const ReferenceOptimumOptions& o;
  double n;

  bool logistic() const { return o.loss() == GlmLoss::logistic; }
  // Sparse A (COO; duplicates add, as in the matrix): the products as gathers and index_adds over the
  // non-zeros, O(nnz) in a few vectorised ops; at::mv on COO dispatches once per non-zero.
  at::Tensor mv(const at::Tensor& v) const {
    if (!a.is_sparse()) return at::mv(a, v);
    const auto idx = a._indices();
    return at::zeros({a.size(0)}, v.options()).index_add_(0, idx[0], a._values() * v.index_select(0, idx[1]));
  }
  at::Tensor rmv(const at::Tensor& r) const {
    if (!a.is_sparse()) return at::mv(a.t(), r);
    const auto idx = a._indices();
    return at::zeros({a.size(1)}, r.options()).index_add_(0, idx[1], a._values() * r.index_select(0, idx[0]));
  }
  double regulariser(const at::Tensor& w) const {
    return o.l1() * w.abs().sum().item<double>() + 0.5 * o.l2() * w.dot(w).item<double>();
  }

  // Value only (line search): one product with A.
  double objective(const at::Tensor& w) const {
    auto z = mv(w);
    const double loss =
        logistic() ? at::softplus(-y * z).mean().item<double>() : 0.5 * (z - y).pow(2).mean().item<double>();
    return loss + regulariser(w);
  }

  Point point(const at::Tensor& w) const {
    Point p;
    p.w = w;
    p.z = mv(w);
    if (logistic()) {
      auto m = y * p.z;
      auto t = at::sigmoid(-m);
      p.loss = at::softplus(-m).mean().item<double>();
      p.dphi = -y * t;
      p.ddphi = t * (1 - t);
    } else {
      auto r = p.z - y;
      p.loss = 0.5 * r.dot(r).item<double>() / n;
      p.dphi = r;
      p.ddphi = at::ones_like(r);
    }
    p.grad_f = rmv(p.dphi) / n;
    p.objective = p.loss + regulariser(w);
    return p;
  }

  // Minimal-norm subgradient of P.
  at::Tensor pseudo_gradient(const Point& p) const {
    auto g = p.grad_f + o.l2() * p.w;
    auto at_zero = at::sign(g) * at::clamp_min(g.abs() - o.l1(), 0.0);
    return at::where(p.w != 0, g + o.l1() * at::sign(p.w), at_zero);
  }

  // P(w) - D(u) for the dual point u = phi'(z) / n (rescaled into the domain of R* when l2 = 0),
  // summed from terms that are each nonnegative, so that no cancellation hides the gap.
  double gap(const Point& p) const {
    const double l1 = o.l1(), l2 = o.l2();
    auto v = -p.grad_f;  // -A^T u
    auto w = p.w;
    if (l2 > 0) {  // u is the loss's gradient: its Fenchel-Young term is zero; R's is per coordinate
      auto q = at::clamp_min(v.abs() - l1, 0.0);
      auto w_dual = at::sign(v) * q / l2;  // argmax_w v w - R(w)
      auto lin = at::where(w_dual != 0, l1 * (w.abs() - at::sign(w_dual) * w), l1 * w.abs() - v * w);
      return (0.5 * l2 * (w - w_dual).pow(2) + lin).sum().item<double>();
    }
    const double vmax = v.numel() ? v.abs().max().item<double>() : 0.0;
    double s = 1;
    if (vmax > l1) {
      if (l1 == 0) return std::numeric_limits<double>::infinity();
      s = l1 / vmax;
    }
    double fy = 0;
    if (s < 1) {
      if (logistic()) {  // phi(z) + phi*(s phi'(z)) - s phi'(z) z with phi'(z) = -y t
        auto m = y * p.z;
        auto st = s * at::sigmoid(-m);
        fy =
            (at::softplus(-m) + at::xlogy(st, st) + at::xlogy(1 - st, 1 - st) + st * m).mean().item<double>();
      } else {
        fy = 0.5 * (1 - s) * (1 - s) * p.dphi.dot(p.dphi).item<double>() / n;
      }
    }
    return std::max(fy, 0.0) + (l1 * w.abs() - s * v * w).sum().item<double>();
  }
};

// Conjugate gradients on H x = b for a PSD operator, stopping at |r| <= tol |b|.
template <typename Op>
at::Tensor conjugate_gradients(const Op& hv, const at::Tensor& b, double tol, int64_t max_iters,
                               int64_t& iters) {
  auto x = at::zeros_like(b), r = b.clone(), p = r.clone();
  double rs = r.dot(r).item<double>();
  const double target = tol * tol * rs;
  for (int64_t k = 0; k < max_iters && rs > target; ++k, ++iters) {
    const at::Tensor hp = hv(p);
    const double php = p.dot(hp).item<double>();
    if (!(php > 0)) break;  // no curvature left along p (flat directions of an unregularised problem)
    const double alpha = rs / php;
    x.add_(p, alpha);
    r.sub_(hp, alpha);
    const double rs_next = r.dot(r).item<double>();
    p = r + (rs_next / rs) * p;
    rs = rs_next;
  }
  return x;
}

// Minimal-norm subgradient norm of the model m(x) = g.(x - w) + (x - w)^T H (x - w) / 2 + l1 |x|_1,
// given its gradient gm = g + H (x - w).
double model_residual(const at::Tensor& x, const at::Tensor& gm, double l1) {
  auto at_zero = at::sign(gm) * at::clamp_min(gm.abs() - l1, 0.0);
  return at::where(x != 0, gm + l1 * at::sign(x), at_zero).norm().item<double>();
}

// The proximal Newton model minimised by cyclic coordinate descent on an explicit H
// (newGLMNET's inner solver), to a model residual of at most `tol`.
at::Tensor model_cd(const at::Tensor& hessian, const at::Tensor& g, const at::Tensor& w, double l1,
                    double tol, int64_t max_sweeps, int64_t& sweeps) {
  const int64_t d = w.numel();
  auto hc = hessian.contiguous();
  auto x = w.clone(), q = at::zeros_like(w);  // q = H (x - w)
  const double* h = hc.data_ptr<double>();
  const double *gp = g.data_ptr<double>(), *wp = w.data_ptr<double>();
  double *xp = x.data_ptr<double>(), *qp = q.data_ptr<double>();
  for (int64_t k = 0; k < max_sweeps; ++k, ++sweeps) {
    for (int64_t j = 0; j < d; ++j) {
      const double hjj = h[j * d + j];
      if (!(hjj > 0)) continue;
      const double c = gp[j] + qp[j] - hjj * (xp[j] - wp[j]);
      const double v = wp[j] - c / hjj;
      const double xn = v > 0 ? std::max(v - l1 / hjj, 0.0) : std::min(v + l1 / hjj, 0.0);
      const double delta = xn - xp[j];
      if (delta == 0) continue;
      xp[j] = xn;
      const double* row = h + j * d;  // H is symmetric: row j is column j
      for (int64_t i = 0; i < d; ++i) qp[i] += delta * row[i];
    }
    if (model_residual(x, g + q, l1) <= tol) break;
  }
  return x;
}

// The same model minimised by FISTA with Hessian-vector products (the matrix-free path).
template <typename Op>
at::Tensor model_fista(const Op& hv, const at::Tensor& g, const at::Tensor& w, double l1, double tol,
                       int64_t max_iters, int64_t& iters) {
  auto v = at::ones_like(w) / std::sqrt(double(w.numel()));
  double lip = 0;
  for (int k = 0; k < 50; ++k) {
    const at::Tensor u = hv(v);
    lip = u.norm().item<double>();
    if (!(lip > 0)) return w.clone();
    v = u / lip;
  }
  const double step = 1 / (1.01 * lip);
  auto x = w.clone(), z = w.clone();
  double t = 1;
  for (int64_t k = 0; k < max_iters; ++k, ++iters) {
    const at::Tensor u = z - step * (g + hv(z - w));
    const at::Tensor xn = at::sign(u) * at::clamp_min(u.abs() - step * l1, 0.0);
    if (((z - xn) * (xn - x)).sum().item<double>() > 0) t = 1;  // adaptive restart
    const double tn = (1 + std::sqrt(1 + 4 * t * t)) / 2;
    z = xn + ((t - 1) / tn) * (xn - x);
    x = xn;
    t = tn;
    if (k % 10 == 9 && model_residual(x, g + hv(x - w), l1) <= tol) break;
  }
  return x;
}

void check_inputs(const at::Tensor& a, const at::Tensor& y, const ReferenceOptimumOptions& o,
                  const at::Tensor& w0) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kDouble,
              "reference_optimum: A must be float64 [n, d], got ", a.sizes(), " ", a.scalar_type());
  TORCH_CHECK(y.dim() == 1 && y.size(0) == a.size(0) && y.scalar_type() == at::kDouble,
              "reference_optimum: y must be float64 [", a.size(0), "], got ", y.sizes(), " ",
              y.scalar_type());
  TORCH_CHECK(o.l1() >= 0 && o.l2() >= 0, "reference_optimum: l1 and l2 must be >= 0, got ", o.l1(), ", ",
              o.l2());
  TORCH_CHECK(o.loss() == GlmLoss::squares || o.l1() > 0 || o.l2() > 0,
              "reference_optimum: the logistic problem needs l1 > 0 or l2 > 0 to have a minimiser");
  TORCH_CHECK(o.rel_gap() > 0, "reference_optimum: rel_gap must be > 0, got ", o.rel_gap());
  const int64_t d = a.size(1);
  TORCH_CHECK(!w0.defined() || (w0.numel() == d && w0.scalar_type() == at::kDouble),
              "reference_optimum: w0 must be float64 [", d, "]");
}

// The Hessian of the smooth part at a point, A^T diag(phi'' / n) A + l2 I: formed
// explicitly (dense A with few columns), else applied as products with A and A^T.
class Hessian {
 public:
  Hessian(const Glm& glm, const Point& p, bool form) : glm_(glm), curvature_(p.ddphi / glm.n) {
    if (!form) return;
    matrix_ = at::mm((glm.a * curvature_.unsqueeze(1)).t(), glm.a);
    matrix_.diagonal().add_(glm.o.l2());
  }
  at::Tensor operator()(const at::Tensor& v) const {
    if (matrix_.defined()) return at::mv(matrix_, v);
    return glm_.rmv(curvature_ * glm_.mv(v)) + glm_.o.l2() * v;
  }
  const at::Tensor& matrix() const { return matrix_; }  ///< undefined: not formed

 private:
  const Glm& glm_;
  at::Tensor curvature_, matrix_;
};

// A search direction and the directional decrease that the Armijo test scales.
struct Direction {
  at::Tensor dir;
  double decrease_rate;
};

// The Newton direction at p (l1 = 0) or the proximal Newton one (l1 > 0); `pg` is P's
// minimal-norm subgradient there.
Direction newton_direction(const Glm& glm, const Point& p, const at::Tensor& pg, double pg_norm,
                           const Hessian& hv, int64_t max_cg, int64_t& inner_iterations) {
  const auto& o = glm.o;
  if (o.l1() == 0) {
    // Inexact Newton: forcing term min(0.5, sqrt|g|) gives superlinear convergence.
    const double forcing = glm.logistic() ? std::min(0.5, std::sqrt(pg_norm)) : 1e-15;  // squares: H is exact
    auto dir = conjugate_gradients(hv, -pg, forcing, max_cg, inner_iterations);
    return {dir, pg.dot(dir).item<double>()};
  }
  // Proximal Newton (Lee, Sun & Saunders, SIAM J. Optim. 2014): minimise the quadratic model
  // plus l1 |x|_1, to a residual shrinking with |pg| (superlinear), then a line search on P.
  const auto g = p.grad_f + o.l2() * p.w;
  const double tol = std::min(0.5, std::sqrt(pg_norm)) * pg_norm;
  const auto x = hv.matrix().defined()
                     ? model_cd(hv.matrix(), g, p.w, o.l1(), tol, 10 * max_cg, inner_iterations)
                     : model_fista(hv, g, p.w, o.l1(), tol, 100 * max_cg, inner_iterations);
  auto dir = x - p.w;
  return {dir, g.dot(dir).item<double>() + o.l1() * (x.abs().sum() - p.w.abs().sum()).item<double>()};
}

// Backtracking from a unit step along `d` until Armijo's condition holds on P; moves p
// (and its gap) and returns true on success.
bool line_search(const Glm& glm, const Direction& d, Point& p, double& gap) {
  for (double t = 1; t > 1e-10; t *= 0.5) {
    auto wn = p.w + t * d.dir;
    const double pn = glm.objective(wn);
    if (d.decrease_rate < 0 && pn <= p.objective + 1e-4 * t * d.decrease_rate) {
      p = glm.point(wn);
      gap = glm.gap(p);
      return true;
    }
    if (t == 1) {
      // Near the optimum P's decrease falls below its rounding: accept a unit step that
      // lowers the certified gap.
      auto pn_point = glm.point(wn);
      const double gn = glm.gap(pn_point);
      if (gn < gap) {
        p = pn_point, gap = gn;
        return true;
      }
    }
  }
  return false;
}

// The fallback when the line search fails: one proximal-gradient step with a backtracked
// step size, taken only if it lowers P.
bool proximal_gradient_step(const Glm& glm, Point& p, double& gap) {
  const auto& o = glm.o;
  auto g = p.grad_f;
  for (double lip = 1; lip < 1e16; lip *= 2) {
    auto v = p.w - g / lip;
    auto wn = at::sign(v) * at::clamp_min(v.abs() - o.l1() / lip, 0.0) / (1 + o.l2() / lip);
    auto step = wn - p.w;
    const double model =
        p.loss + g.dot(step).item<double>() + 0.5 * lip * step.dot(step).item<double>() + glm.regulariser(wn);
    auto pn_point = glm.point(wn);
    if (pn_point.loss + glm.regulariser(wn) <= model) {
      if (!(pn_point.objective < p.objective)) return false;
      p = pn_point;
      gap = glm.gap(p);
      return true;
    }
  }
  return false;
}

}  // namespace

bool ReferenceOptimum::certified() const {
  return gap <= 1e-12 * std::abs(objective);
}

std::pair<double, double> objective_and_gap(const at::Tensor& a, const at::Tensor& y, const at::Tensor& w,
                                            const ReferenceOptimumOptions& o) {
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kDouble && w.scalar_type() == at::kDouble &&
                  w.numel() == a.size(1),
              "objective_and_gap: need float64 A [n, d] and w [d], got A ", a.sizes(), " ", a.scalar_type(),
              ", w ", w.sizes(), " ", w.scalar_type());
  Glm glm{a, y, o, double(a.size(0))};
  const auto p = glm.point(w);
  return {p.objective, glm.gap(p)};
}

ReferenceOptimum reference_optimum(const at::Tensor& a, const at::Tensor& y, const ReferenceOptimumOptions& o,
                                   const at::Tensor& w0) {
  check_inputs(a, y, o, w0);
  const int64_t d = a.size(1);
  // Sparse data with few columns (a9a: 123) is solved densely when that fits in 512 MB: the
  // Hessian is then formed once per Newton step instead of applied by a product with A and
  // A^T per CG or coordinate iteration (minutes on a9a with l1 > 0).
  const bool densify = a.is_sparse() && d <= 1024 && a.size(0) * d <= (int64_t{1} << 26);
  const at::Tensor a_used = densify ? a.to_dense() : a;
  Glm glm{a_used, y, o, double(a.size(0))};
  const int64_t max_cg = o.max_cg() > 0 ? o.max_cg() : 10 * d + 100;
  const bool explicit_hessian = o.form_hessian() && a_used.layout() == at::kStrided && d <= 1024;

  ReferenceOptimum res;
  auto p = glm.point(w0.defined() ? w0.clone() : at::zeros({d}, at::kDouble));
  double gap = glm.gap(p);
  for (; res.newton_iterations < o.max_newton(); ++res.newton_iterations) {
    if (gap <= o.rel_gap() * std::abs(p.objective)) break;
    const auto pg = glm.pseudo_gradient(p);
    const double pg_norm = pg.norm().item<double>();
    if (pg_norm == 0) break;
    const Hessian hv(glm, p, explicit_hessian);
    const auto dir = newton_direction(glm, p, pg, pg_norm, hv, max_cg, res.inner_iterations);
    if (!line_search(glm, dir, p, gap) && !proximal_gradient_step(glm, p, gap))
      break;  // at the floor of float64: report the gap reached
  }
  res.w = p.w;
  res.objective = p.objective;
  res.gap = gap;
  return res;
}

}  // namespace sgdx::optim

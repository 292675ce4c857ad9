#include "sgdx/optim/sparse_svrg.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "sparse_glm.h"

namespace sgdx::optim {

namespace detail {
namespace {

// One piece of T: for inputs in the piece T(z) = a z + beta (a = 1 / (1 + eta l2)).
struct Piece {
  double beta = 0;
  bool zero = false;  // |u| <= eta l1: T(z) = 0
};

Piece piece_of(double z, double eta_mu, double eta_l1, double a) {
  const double u = z - eta_mu;
  if (u > eta_l1) return {-a * (eta_mu + eta_l1), false};
  if (u < -eta_l1) return {-a * (eta_mu - eta_l1), false};
  return {0.0, true};
}

}  // namespace

double repeated_prox_step(double z, double eta_mu, double eta_l1, double eta_l2, int64_t k) {
  TORCH_CHECK(k >= 0 && eta_l1 >= 0 && eta_l2 >= 0,
              "repeated_prox_step: k, eta l1 and eta l2 must be >= 0, got k=", k, " eta_l1=", eta_l1,
              " eta_l2=", eta_l2);
  const double a = 1.0 / (1.0 + eta_l2);
  // Each pass consumes the steps spent on one piece; the iterates are monotone, so at most
  // three pieces (and a fixed point) are visited.
  for (int pass = 0; k > 0 && pass < 8; ++pass) {
    const Piece p = piece_of(z, eta_mu, eta_l1, a);
    if (p.zero) {
      z = 0.0;
      --k;
      if (piece_of(0.0, eta_mu, eta_l1, a).zero) return 0.0;  // 0 is the fixed point
      continue;
    }
    // The iterates on this piece: z_i = f + a^i (z - f) (a < 1, f the fixed point) or z + i beta.
    const auto at = [&](int64_t i) {
      if (a < 1.0) {
        const double f = p.beta / (1.0 - a);
        return f + std::pow(a, static_cast<double>(i)) * (z - f);
      }
      return z + static_cast<double>(i) * p.beta;
    };
    const auto same = [&](double w) {
      const Piece q = piece_of(w, eta_mu, eta_l1, a);
      return !q.zero && q.beta == p.beta;
    };
    // K: the steps taken from inputs on this piece (z_0 .. z_{K-1} on it, z_K not), estimated
    // in closed form, then corrected against the iterates themselves.
    int64_t steps = k;
    const double bound = p.beta == -a * (eta_mu + eta_l1) ? eta_mu + eta_l1 : eta_mu - eta_l1;
    double estimate = std::numeric_limits<double>::infinity();
    if (a < 1.0) {
      const double f = p.beta / (1.0 - a);
      const double ratio = (bound - f) / (z - f);
      if (ratio > 0 && ratio < 1) estimate = std::ceil(std::log(ratio) / std::log(a));
    } else if (p.beta != 0.0 && (bound - z) / p.beta > 0) {
      estimate = std::ceil((bound - z) / p.beta);
    }
    // An infinite estimate is exact (the fixed point lies on the piece, or is never
    // reached); a finite one near or below k is checked against the iterates, whose
    // rounding may put the crossing one step either side.
    if (estimate <= static_cast<double>(k) + 1) {
      steps = std::clamp<int64_t>(static_cast<int64_t>(estimate), 1, k);
      for (int fix = 0; fix < 4 && steps < k && same(at(steps)); ++fix) ++steps;
      for (int fix = 0; fix < 4 && steps > 1 && !same(at(steps - 1)); ++fix) --steps;
    }
    z = at(steps);
    k -= steps;
  }
  // Not reached for valid input (at most three pieces); a guard, never a silent answer.
  TORCH_CHECK(k == 0, "repeated_prox_step: did not settle (z=", z, ", eta_mu=", eta_mu, ", eta_l1=", eta_l1,
              ", eta_l2=", eta_l2, ", ", k, " steps left)");
  return z;
}
}  // namespace detail

SparseSVRG::SparseSVRG(const data::LibsvmCsr& data, SparseSVRGOptions options)
    : data_(data), o_(options), n_(data.rows()), d_(data.num_features) {
  TORCH_CHECK(o_.lr > 0 && std::isfinite(o_.lr), "SparseSVRG: lr must be positive, got ", o_.lr);
  TORCH_CHECK(o_.b >= 1, "SparseSVRG: b must be >= 1, got ", o_.b);
  TORCH_CHECK(o_.m >= 0, "SparseSVRG: m must be >= 0, got ", o_.m);
  TORCH_CHECK(o_.l1 >= 0 && o_.l2 >= 0, "SparseSVRG: l1 and l2 must be >= 0, got l1=", o_.l1, " l2=", o_.l2);
  TORCH_CHECK(n_ > 0 && d_ > 0, "SparseSVRG: empty data ('", data.name, "')");
  TORCH_CHECK(data.indptr.is_contiguous() && data.indices.is_contiguous() && data.values.is_contiguous() &&
                  data.labels.is_contiguous(),
              "SparseSVRG: the CSR tensors must be contiguous");
  m_ = o_.m > 0 ? o_.m : (2 * n_ + o_.b - 1) / o_.b;
  TORCH_CHECK(m_ < std::numeric_limits<int32_t>::max(),
              "SparseSVRG: m (inner steps per stage) must be < 2^31, got ", m_);
  indptr_ = data.indptr.data_ptr<int64_t>();
  indices_ = data.indices.data_ptr<int64_t>();
  values_ = data.values.data_ptr<double>();
  labels_ = data.labels.data_ptr<double>();
  c_ = detail::huge_page_array<Coordinate, FreeDeleter>(d_, "SparseSVRG");
  snapshot_margin_.assign(n_, 0.0);
}

void SparseSVRG::FreeDeleter::operator()(Coordinate* p) const {
  std::free(p);
}

double SparseSVRG::margin(int64_t row) const {
  double z = 0;
  for (int64_t k = indptr_[row]; k < indptr_[row + 1]; ++k) z += values_[k] * c_[indices_[k]].x;
  return z;
}

void SparseSVRG::catch_up(int64_t j) {
  auto& c = c_[j];
  const int64_t k = inner_ - c.last;
  if (k > 0) c.x = detail::repeated_prox_step(c.x, o_.lr * c.mu, o_.lr * o_.l1, o_.lr * o_.l2, k);
  c.last = static_cast<int32_t>(inner_);
}

void SparseSVRG::start_stage() {
  for (int64_t j = 0; j < d_; ++j) {
    catch_up(j);
    c_[j].mu = 0.0;
    c_[j].last = 0;
    c_[j].mark = -1;
  }
  for (int64_t i = 0; i < n_; ++i) {
    if (i + 1 < n_) detail::prefetch_row(indptr_, indices_, i + 1, c_.get());
    snapshot_margin_[i] = margin(i);
    const double g = detail::glm_derivative(o_.loss, snapshot_margin_[i], labels_[i]) / double(n_);
    for (int64_t k = indptr_[i]; k < indptr_[i + 1]; ++k) c_[indices_[k]].mu += g * values_[k];
  }
  evaluations_ += n_;
  inner_ = 0;
  ++stage_;
  started_ = true;
}

void SparseSVRG::step(const std::vector<int64_t>& batch) {
  TORCH_CHECK(!batch.empty(), "SparseSVRG::step: the batch is empty");
  for (const auto i : batch)
    TORCH_CHECK(i >= 0 && i < n_, "SparseSVRG::step: row ", i, " is out of range [0, ", n_, ")");
  if (!started_ || inner_ == m_) start_stage();
  // The batch's coordinates, brought up to date.
  detail::batch_gradient(
      o_.loss, {indptr_, indices_, values_, labels_}, batch, snapshot_margin_, c_.get(), inner_, touched_,
      [&](int64_t j) { catch_up(j); }, [](const Coordinate& c) { return c.x; });
  for (const auto j : touched_) {
    auto& c = c_[j];
    c.x = detail::elastic_net_prox(c.x - o_.lr * (c.grad + c.mu), o_.lr, o_.l1, o_.l2);
    c.last = static_cast<int32_t>(inner_ + 1);
  }
  ++inner_;
  evaluations_ += 2 * static_cast<int64_t>(batch.size());
}

at::Tensor SparseSVRG::weights() {
  auto x = at::empty({d_}, at::kDouble);
  auto* xp = x.data_ptr<double>();
  for (int64_t j = 0; j < d_; ++j) {
    catch_up(j);
    xp[j] = c_[j].x;
  }
  return x;
}

}  // namespace sgdx::optim

#include "sgdx/optim/sparse_katyusha.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "sparse_glm.h"

namespace sgdx::optim {

SparseKatyusha::SparseKatyusha(const data::LibsvmCsr& data, const KatyushaOptions& options, GlmLoss loss)
    : data_(data), o_(options), loss_(loss), n_(data.rows()), d_(data.num_features) {
  o_.validate();
  TORCH_CHECK(o_.n() == n_, "SparseKatyusha: options.n (", o_.n(), ") must be the data's rows (", n_, ")");
  TORCH_CHECK(d_ > 0, "SparseKatyusha: the data '", data.name, "' has no features");
  TORCH_CHECK(data.indptr.is_contiguous() && data.indices.is_contiguous() && data.values.is_contiguous() &&
                  data.labels.is_contiguous(),
              "SparseKatyusha: the CSR tensors must be contiguous");
  m_ = o_.inner_steps();
  TORCH_CHECK(m_ < std::numeric_limits<int32_t>::max(), "SparseKatyusha: m must be < 2^31, got ", m_);
  indptr_ = data.indptr.data_ptr<int64_t>();
  indices_ = data.indices.data_ptr<int64_t>();
  values_ = data.values.data_ptr<double>();
  labels_ = data.labels.data_ptr<double>();
  c_ = detail::huge_page_array<Coordinate, FreeDeleter>(d_, "SparseKatyusha");
  snapshot_margin_.assign(n_, 0.0);
}

void SparseKatyusha::FreeDeleter::operator()(Coordinate* p) const {
  std::free(p);
}

void SparseKatyusha::catch_up(int64_t j) {
  auto& c = c_[j];
  const int64_t k = inner_ - c.last;
  if (k == 0) return;
  const double l1 = o_.l1(), l2 = o_.l2(), tau3 = 1 - tau1_ - tau2_;
  // l1 > 0: step by step, as the dense optimizer computes them. l1 = 0: from the tables
  // whatever k (a table read is ~20 flops; one step has two divisions in a dependent chain).
  if (l1 > 0) {
    for (int64_t t = c.last; t < inner_; ++t) {
      const double x = tau1_ * c.z + tau2_ * c.xt + tau3 * c.y;
      c.z = detail::elastic_net_prox(c.z - alpha_ * c.mu, alpha_, l1, l2);
      c.y = detail::elastic_net_prox(x - c.mu / eta_inv_, 1.0 / eta_inv_, l1, l2);
      c.ysum += weight_[t] * c.y;
    }
  } else {
    const Jump& J = jumps_[k];
    // The affine part b of s' = A s + b (docs/sparse_vr.md).
    const double b1 = (tau2_ * c.xt - c.mu / eta_inv_) / (1.0 + l2 / eta_inv_);
    const double b2 = -alpha_ * c.mu / (1.0 + alpha_ * l2);
    c.ysum += weight_[c.last] * (J.p1 * c.y + J.p2 * c.z + J.q1 * b1 + J.q2 * b2);
    const double y = J.a11 * c.y + J.a12 * c.z + J.s11 * b1 + J.s12 * b2;
    c.z = J.a22 * c.z + J.s22 * b2;
    c.y = y;
  }
  c.last = static_cast<int32_t>(inner_);
}

void SparseKatyusha::start_stage() {
  // Katyusha::step's constants for stage s = stage_.
  const double b = double(o_.b()), L = o_.L(), sigma = o_.l2();
  tau2_ = o_.b() == 1 ? 0.5 : 1.0 / (2.0 * b);
  tau1_ = sigma > 0 ? std::min(std::sqrt(8.0 * b * double(m_) * sigma / (3.0 * L)) * tau2_, 0.5)
                    : 2.0 / (double(stage_) + 4.0);
  alpha_ = o_.lr() > 0 ? o_.lr() / tau1_ : 1.0 / (3.0 * tau1_ * L);
  eta_inv_ = o_.lr() > 0 ? 1.0 / o_.lr() : 3.0 * L;
  weight_.resize(m_ + 1);
  for (int64_t j = 0; j <= m_; ++j) weight_[j] = std::pow(1.0 + alpha_ * sigma, double(j));
  TORCH_CHECK(std::isfinite(weight_[m_]),
              "SparseKatyusha: the snapshot weights (1 + alpha l2)^j overflow by j = m (", m_,
              ", alpha l2 = ", alpha_ * sigma, "): lower m or the step");
  if (o_.l1() == 0) {
    // A = [[c tau3, c tau1], [0, a]], c = 1/(1 + eta l2), a = 1/(1 + alpha l2).
    const double cy = 1.0 / (1.0 + sigma / eta_inv_), az = 1.0 / (1.0 + alpha_ * sigma);
    const double A11 = cy * (1 - tau1_ - tau2_), A12 = cy * tau1_, A22 = az;
    jumps_.assign(m_ + 1, Jump{});
    for (int64_t k = 0; k < m_; ++k) {
      const Jump& J = jumps_[k];
      Jump& N = jumps_[k + 1];
      N.a11 = A11 * J.a11;
      N.a12 = A11 * J.a12 + A12 * J.a22;
      N.a22 = A22 * J.a22;
      N.s11 = J.s11 + J.a11;
      N.s12 = J.s12 + J.a12;
      N.s22 = J.s22 + J.a22;
      const double q = weight_[k];  // q^k: the (k+1)-th missed step's weight relative to the first
      N.p1 = J.p1 + q * N.a11;
      N.p2 = J.p2 + q * N.a12;
      N.q1 = J.q1 + q * N.s11;
      N.q2 = J.q2 + q * N.s12;
    }
  }
  for (int64_t j = 0; j < d_; ++j) {
    auto& c = c_[j];
    c.mu = c.ysum = 0.0;
    c.last = 0;
    c.mark = -1;
  }
  for (int64_t i = 0; i < n_; ++i) {
    if (i + 1 < n_) detail::prefetch_row(indptr_, indices_, i + 1, c_.get());
    double z = 0;
    for (int64_t k = indptr_[i]; k < indptr_[i + 1]; ++k) z += values_[k] * c_[indices_[k]].xt;
    snapshot_margin_[i] = z;
    const double g = detail::glm_derivative(loss_, z, labels_[i]) / double(n_);
    for (int64_t k = indptr_[i]; k < indptr_[i + 1]; ++k) c_[indices_[k]].mu += g * values_[k];
  }
  evaluations_ += n_;
  wsum_ = 0;
  inner_ = 0;
  started_ = true;
}

// x~ is the weighted average of the stage's y's.
void SparseKatyusha::end_stage() {
  for (int64_t j = 0; j < d_; ++j) {
    catch_up(j);
    c_[j].xt = c_[j].ysum / wsum_;
  }
  ++stage_;
}

void SparseKatyusha::step(const std::vector<int64_t>& batch) {
  TORCH_CHECK(!batch.empty(), "SparseKatyusha::step: the batch is empty");
  for (const auto i : batch)
    TORCH_CHECK(i >= 0 && i < n_, "SparseKatyusha::step: row ", i, " is out of range [0, ", n_, ")");
  if (started_ && inner_ == m_) end_stage();
  if (!started_ || inner_ == m_) start_stage();
  const double tau3 = 1 - tau1_ - tau2_;
  detail::batch_gradient(
      loss_, {indptr_, indices_, values_, labels_}, batch, snapshot_margin_, c_.get(), inner_, touched_,
      [&](int64_t j) {
        catch_up(j);
        auto& c = c_[j];
        c.x = tau1_ * c.z + tau2_ * c.xt + tau3 * c.y;
      },
      [](const Coordinate& c) { return c.x; });
  const double w = weight_[inner_], l1 = o_.l1(), l2 = o_.l2();
  for (const auto j : touched_) {
    auto& c = c_[j];
    const double v = c.mu + c.grad;
    c.z = detail::elastic_net_prox(c.z - alpha_ * v, alpha_, l1, l2);
    c.y = detail::elastic_net_prox(c.x - v / eta_inv_, 1.0 / eta_inv_, l1, l2);
    c.ysum += w * c.y;
    c.last = static_cast<int32_t>(inner_ + 1);
  }
  wsum_ += w;
  ++inner_;
  evaluations_ += 2 * static_cast<int64_t>(batch.size());
}

at::Tensor SparseKatyusha::weights() {
  auto y = at::empty({d_}, at::kDouble);
  auto* yp = y.data_ptr<double>();
  for (int64_t j = 0; j < d_; ++j) {
    catch_up(j);
    yp[j] = c_[j].y;
  }
  return y;
}

}  // namespace sgdx::optim

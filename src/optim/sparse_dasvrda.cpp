#include "sgdx/optim/sparse_dasvrda.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

#include "sparse_glm.h"

namespace sgdx::optim {
namespace {

double q_of(int64_t k) {
  return static_cast<double>(k) * static_cast<double>(k + 1);
}

// Runs of missed steps at most this long are summed step by step (as the dense
// optimizer computes them); longer ones from the prefix tables, which cost a few table
// reads where each direct step costs a prox with a division (one run, 10^5 x 2·10^5,
// batch 317: 1.81 s to a 1e-4 gap with 2, 2.14 s with 64).
constexpr int64_t kDirectRun = 2;

}  // namespace

SparseDASVRDA::SparseDASVRDA(const data::LibsvmCsr& data, const DASVRDAOptions& options, GlmLoss loss)
    : data_(data), o_(options), loss_(loss), n_(data.rows()), d_(data.num_features) {
  o_.validate();
  TORCH_CHECK(o_.n() == n_, "SparseDASVRDA: options.n (", o_.n(), ") must be the data's rows (", n_, ")");
  TORCH_CHECK(d_ > 0, "SparseDASVRDA: the data '", data.name, "' has no features");
  m_ = o_.inner_steps();
  TORCH_CHECK(m_ < std::numeric_limits<int32_t>::max(), "SparseDASVRDA: m must be < 2^31, got ", m_);
  eta_ = o_.eta();
  gamma_ = o_.gamma();
  indptr_ = data.indptr.data_ptr<int64_t>();
  indices_ = data.indices.data_ptr<int64_t>();
  values_ = data.values.data_ptr<double>();
  labels_ = data.labels.data_ptr<double>();
  c_ = detail::huge_page_array<Coordinate, FreeDeleter>(d_, "SparseDASVRDA");
  xt1_.assign(d_, 0.0);
  xt2_.assign(d_, 0.0);
  zt_.assign(d_, 0.0);
  yt_.assign(d_, 0.0);
  yprev_.assign(d_, 0.0);
  snapshot_margin_.assign(n_, 0.0);
  // sum_{i <= k} 2i / (1 + r q_i) and 2i q_i / (1 + r q_i), r = eta l2 / 4.
  const double r = eta_ * o_.l2() / 4;
  table1_.assign(m_ + 1, 0.0);
  table2_.assign(m_ + 1, 0.0);
  for (int64_t i = 1; i <= m_; ++i) {
    const double w = 2.0 * double(i) / (1.0 + r * q_of(i));
    table1_[i] = table1_[i - 1] + w;
    table2_[i] = table2_[i - 1] + w * q_of(i);
  }
}

void SparseDASVRDA::FreeDeleter::operator()(Coordinate* p) const {
  std::free(p);
}

double SparseDASVRDA::prox(double v, double c) const {
  return detail::elastic_net_prox(v, c, o_.l1(), o_.l2());
}

// sum_{k0 < i <= k1} 2i z_i for a coordinate current at k0 whose missed steps all have v = mu.
double SparseDASVRDA::z_sum(const Coordinate& c, int64_t k0, int64_t k1) const {
  const double q0 = q_of(k0);
  // z_i as the dense step computes it: gbar_i from its running form, then the prox.
  const auto z_at = [&](int64_t i) {
    const double qi = q_of(i);
    const double gbar = (q0 * c.gbar + c.mu * (qi - q0)) / qi;
    const double ci = eta_ * qi / 4;
    return prox(c.z0 - ci * gbar, ci);
  };
  if (k1 - k0 <= kDirectRun) {
    double sum = 0;
    for (int64_t i = k0 + 1; i <= k1; ++i) sum += 2.0 * double(i) * z_at(i);
    return sum;
  }
  // u_i = z0 - c_i gbar_i = A - B q_i; the threshold is s q_i and the divisor 1 + r q_i.
  const double A = c.z0 - eta_ / 4 * q0 * (c.gbar - c.mu), B = eta_ / 4 * c.mu, s = eta_ * o_.l1() / 4;
  const auto piece = [&](int64_t i) {  // +1, 0, -1: which branch of the soft threshold
    const double qi = q_of(i), u = A - B * qi;
    return u > s * qi ? 1 : (u < -s * qi ? -1 : 0);
  };
  // The pieces are conditions linear in q_i, which increases with i: at most three runs.
  double sum = 0;
  int64_t lo = k0 + 1;
  while (lo <= k1) {
    const int p = piece(lo);
    int64_t a = lo, b = k1;  // the last i of this run: piece(a) == p
    while (a < b) {
      const int64_t mid = a + (b - a + 1) / 2;
      if (piece(mid) == p) {
        a = mid;
      } else {
        b = mid - 1;
      }
    }
    if (p != 0) {
      const double C = p > 0 ? B + s : B - s;
      sum += A * (table1_[a] - table1_[lo - 1]) - C * (table2_[a] - table2_[lo - 1]);
    }
    lo = a + 1;
  }
  return sum;
}

void SparseDASVRDA::catch_up(int64_t j, int64_t k) {
  auto& c = c_[j];
  const int64_t k0 = c.last;
  if (k0 >= k) return;
  const double q0 = q_of(k0), q1 = q_of(k);
  const double xsum = q0 * c.x + z_sum(c, k0, k);
  c.gbar = (q0 * c.gbar + c.mu * (q1 - q0)) / q1;
  const double ck = eta_ * q1 / 4;
  c.z = prox(c.z0 - ck * c.gbar, ck);
  c.x = xsum / q1;
  c.last = static_cast<int32_t>(k);
}

// x~_{-1} = x~_0 = z~_0 = x_0, theta~_0 = 1 - 1/gamma.
void SparseDASVRDA::start_outer_loop() {
  for (int64_t j = 0; j < d_; ++j) xt1_[j] = xt2_[j] = zt_[j] = c_[j].x;
  s_ = 1;
  theta_prev_ = 1 - 1 / gamma_;
  have_yprev_ = false;
}

void SparseDASVRDA::start_stage() {
  const auto compute_y = [&] {
    theta_s_ = (1 - 1 / gamma_) * (double(s_) + 2) / 2;
    for (int64_t j = 0; j < d_; ++j)
      yt_[j] = xt1_[j] + ((theta_prev_ - 1) / theta_s_) * (xt1_[j] - xt2_[j]) +
               (theta_prev_ / theta_s_) * (zt_[j] - xt1_[j]);
  };
  compute_y();
  bool restart = false;
  if (o_.restart() == Restart::periodic) {
    restart = s_ > o_.period();
  } else if (o_.restart() == Restart::adaptive && have_yprev_ && s_ > 1) {
    double dot = 0;  // <y~_{s-1} - x~_{s-1}, y~_s - x~_{s-1}> > 0: y~ points back
    for (int64_t j = 0; j < d_; ++j) dot += (yprev_[j] - xt1_[j]) * (yt_[j] - xt1_[j]);
    restart = dot > 0;
  }
  if (restart) {
    xt2_ = xt1_;
    zt_ = xt1_;
    theta_prev_ = 1 - 1 / gamma_;
    s_ = 1;
    ++restarts_;
    compute_y();
  }
  // mu = grad F(x~_{s-1}); the snapshot margins for the inner steps' g0.
  for (int64_t j = 0; j < d_; ++j) c_[j].mu = 0.0;
  for (int64_t i = 0; i < n_; ++i) {
    if (i + 1 < n_) {
      detail::prefetch_row(indptr_, indices_, i + 1, xt1_.data());
      detail::prefetch_row(indptr_, indices_, i + 1, c_.get());
    }
    double z = 0;
    for (int64_t k = indptr_[i]; k < indptr_[i + 1]; ++k) z += values_[k] * xt1_[indices_[k]];
    snapshot_margin_[i] = z;
    const double g = detail::glm_derivative(loss_, z, labels_[i]) / double(n_);
    for (int64_t k = indptr_[i]; k < indptr_[i + 1]; ++k) c_[indices_[k]].mu += g * values_[k];
  }
  evaluations_ += n_;
  for (int64_t j = 0; j < d_; ++j) {
    auto& c = c_[j];
    c.x = c.z = c.z0 = yt_[j];
    c.gbar = 0;
    c.last = 0;
    c.mark = -1;
  }
}

void SparseDASVRDA::end_stage() {
  for (int64_t j = 0; j < d_; ++j) catch_up(j, m_);
  xt2_ = xt1_;
  for (int64_t j = 0; j < d_; ++j) {
    xt1_[j] = c_[j].x;
    zt_[j] = c_[j].z;
  }
  yprev_ = yt_;
  have_yprev_ = true;
  theta_prev_ = theta_s_;
  s_ += 1;
  k_ = 0;
}

void SparseDASVRDA::step(const std::vector<int64_t>& batch) {
  TORCH_CHECK(!batch.empty(), "SparseDASVRDA::step: the batch is empty");
  for (const auto i : batch)
    TORCH_CHECK(i >= 0 && i < n_, "SparseDASVRDA::step: row ", i, " is out of range [0, ", n_, ")");
  if (!started_) {
    start_outer_loop();
    started_ = true;
  }
  if (k_ == 0) start_stage();
  const int64_t k = k_ + 1;
  const double th_k = double(k + 1) / 2, th_km1 = double(k) / 2;
  detail::batch_gradient(
      loss_, {indptr_, indices_, values_, labels_}, batch, snapshot_margin_, c_.get(), k, touched_,
      [&](int64_t j) {
        catch_up(j, k - 1);
        auto& c = c_[j];
        c.y = (1 - 1 / th_k) * c.x + (1 / th_k) * c.z;
      },
      [](const Coordinate& c) { return c.y; });
  const double ck = eta_ * th_k * th_km1;
  for (const auto j : touched_) {
    auto& c = c_[j];
    const double v = c.mu + c.grad;
    c.gbar = (1 - 1 / th_k) * c.gbar + (1 / th_k) * v;
    c.z = prox(c.z0 - ck * c.gbar, ck);
    c.x = (1 - 1 / th_k) * c.x + (1 / th_k) * c.z;
    c.last = static_cast<int32_t>(k);
  }
  k_ = k;
  evaluations_ += 2 * static_cast<int64_t>(batch.size());
  if (k_ >= m_) end_stage();
}

at::Tensor SparseDASVRDA::weights() {
  auto x = at::empty({d_}, at::kDouble);
  auto* xp = x.data_ptr<double>();
  for (int64_t j = 0; j < d_; ++j) {
    catch_up(j, k_);
    xp[j] = c_[j].x;
  }
  return x;
}

}  // namespace sgdx::optim

#pragma once
// Katyusha: Allen-Zhu, "Katyusha: The First Direct Acceleration of Stochastic
// Gradient Methods", STOC 2017 / JMLR 2018 (mini-batch, option I), for
// P(x) = (1/n) sum f_i(x) + R(x), R the elastic net (../shared/specs/variance_reduced.md):
//   x_{k+1} = tau1 z_k + tau2 x~ + (1 - tau1 - tau2) y_k
//   v = mu + (1/b) sum [grad f_i(x_{k+1}) - grad f_i(x~)]
//   z_{k+1} = prox_{alpha R}(z_k - alpha v),  y_{k+1} = prox_{eta R}(x_{k+1} - eta v)
//   x~ = (1 + alpha sigma)^j-weighted average of the stage's y's
// with eta = lr (1/(3L) by default) and alpha = eta / tau1; tau1 and tau2 come from
// L, sigma = l2, b and m. The parameters hold y_k.
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "sgdx/export.h"
#include "sgdx/optim/detail/fields.h"
#include "sgdx/optim/vr_base.h"

#include <cstdint>
#include <ostream>
#include <vector>

namespace sgdx::optim {

// The fields of KatyushaOptions (type, name, default), listed once: declaration,
// archive keys, == and <<. L: the smoothness (the constructor's argument); n: the
// number of components (required); m: inner steps, 0: ceil(n / b); l2: also the
// strong convexity sigma; lr: the y-step eta, 0: 1/(3L).
#define SGDX_KATYUSHA_OPTIONS(X) \
  X(double, L, 0.0)              \
  X(int64_t, n, 0)               \
  X(int64_t, b, 1)               \
  X(int64_t, m, 0)               \
  X(double, l1, 0.0)             \
  X(double, l2, 0.0)             \
  X(double, lr, 0.0)

struct SGDX_API KatyushaOptions : public torch::optim::OptimizerCloneableOptions<KatyushaOptions> {
  KatyushaOptions(double L);  // NOLINT(google-explicit-constructor): the required smoothness L
  SGDX_FIELDS(SGDX_KATYUSHA_OPTIONS)

 public:
  int64_t inner_steps() const { return m() > 0 ? m() : (n() + b() - 1) / b(); }
  void validate() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  /// The y-step eta (lr, or 1/(3L) while lr is 0). An LR scheduler's set_lr sets
  /// lr: both steps (eta and alpha = eta / tau1) scale with it, and with R = 0 the
  /// step's move y_{k+1} - x_{k+1} = -eta v does too; tau1 stays L's.
  double get_lr() const override;
  void set_lr(const double lr) override;
  friend bool operator==(const KatyushaOptions& a, const KatyushaOptions& b) {
    return detail::fields_equal(a, b);
  }
  friend std::ostream& operator<<(std::ostream& os, const KatyushaOptions& o) {
    return detail::print_fields(os, "KatyushaOptions", o);
  }
};
#undef SGDX_KATYUSHA_OPTIONS

// y_k, z_k, the snapshot x~, mu = grad F(x~), and the stage's weighted sum of y's.
#define SGDX_KATYUSHA_STATE(X) \
  X(torch::Tensor, y, {})      \
  X(torch::Tensor, z, {})      \
  X(torch::Tensor, xt, {})     \
  X(torch::Tensor, mu, {})     \
  X(torch::Tensor, ysum, {})

struct SGDX_API KatyushaParamState : public torch::optim::OptimizerCloneableParamState<KatyushaParamState> {
  SGDX_FIELDS(SGDX_KATYUSHA_STATE)
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};
#undef SGDX_KATYUSHA_STATE

/// n, b, m, L, lr (and sigma = l2 for tau1) come from the first group; l1 and l2 of
/// the prox are per group (e.g. none on biases).
class SGDX_API Katyusha : public VROptimizerBase {
 public:
  explicit Katyusha(std::vector<torch::Tensor> params, const KatyushaOptions& options);
  explicit Katyusha(const std::vector<torch::optim::OptimizerParamGroup>& groups,
                    const KatyushaOptions& defaults);
  torch::Tensor step(LossClosure batch) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 private:
  void start_stage(const std::vector<torch::Tensor>& params);
  void update(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& x,
              const std::vector<torch::Tensor>& v, double alpha, double w);
};

}  // namespace sgdx::optim

#pragma once
// DASVRDA: Murata & Suzuki, "Doubly Accelerated Stochastic Variance Reduced Dual
// Averaging Method for Regularized Empirical Risk Minimization", NeurIPS 2017, for
// P(x) = (1/n) sum f_i(x) + R(x), R the elastic net: an accelerated outer loop
// (momentum on the stage outputs, theta~_s) around One-Stage-AccSVRDA, dual
// averaging of the variance-reduced gradients centred at z_0:
//   y~_s = x~_{s-1} + ((theta~_{s-1} - 1)/theta~_s)(x~_{s-1} - x~_{s-2}) + (theta~_{s-1}/theta~_s)(z~_{s-1} -
//   x~_{s-1}) inner k: y_k = (1 - 1/theta_k) x_{k-1} + (1/theta_k) z_{k-1},  gbar_k = average of the v's
//            z_k = prox_{eta theta_k theta_{k-1} R}(z_0 - eta theta_k theta_{k-1} gbar_k)
//            x_k = (1 - 1/theta_k) x_{k-1} + (1/theta_k) z_k
// with restarts none / periodic / adaptive. The formulas are in
// ../shared/specs/variance_reduced.md; the parameters hold x_k.
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "sgdx/export.h"
#include "sgdx/optim/detail/fields.h"
#include "sgdx/optim/vr_base.h"

#include <cstdint>
#include <ostream>
#include <vector>

namespace sgdx::optim {

enum class Restart : int64_t { none = 0, periodic = 1, adaptive = 2 };

// The fields of DASVRDAOptions (type, name, default), listed once: declaration,
// archive keys, == and <<. L: the average smoothness L-bar (the constructor's
// argument); b: 0 = ceil(sqrt(n)); m: 0 = ceil(n / b); lr: eta, 0 = the theory value
// 1 / ((1 + gamma (m + 1) / b) L); restart_period (periodic): 0 = 1 + ceil(sqrt(L/l2) (b/n + 1/sqrt(n))).
#define SGDX_DASVRDA_OPTIONS(X)          \
  X(double, L, 0.0)                      \
  X(int64_t, n, 0)                       \
  X(int64_t, b, 0)                       \
  X(int64_t, m, 0)                       \
  X(double, lr, 0.0)                     \
  X(double, l1, 0.0)                     \
  X(double, l2, 0.0)                     \
  X(Restart, restart, Restart::adaptive) \
  X(int64_t, restart_period, 0)

struct SGDX_API DASVRDAOptions : public torch::optim::OptimizerCloneableOptions<DASVRDAOptions> {
  DASVRDAOptions(double L);  // NOLINT(google-explicit-constructor): the average smoothness L-bar
  SGDX_FIELDS(SGDX_DASVRDA_OPTIONS)

 public:
  int64_t batch() const;
  int64_t inner_steps() const;
  double gamma() const;
  double eta() const;
  int64_t period() const;
  void validate() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override { return eta(); }
  void set_lr(const double lr) override { this->lr(lr); }
  friend bool operator==(const DASVRDAOptions& a, const DASVRDAOptions& b) {
    return detail::fields_equal(a, b);
  }
  friend std::ostream& operator<<(std::ostream& os, const DASVRDAOptions& o) {
    return detail::print_fields(os, "DASVRDAOptions", o);
  }
};
#undef SGDX_DASVRDA_OPTIONS

// Outer loop: x~_{s-1} (xt1), x~_{s-2} (xt2), z~_{s-1} (zt), y~_s (yt) and y~_{s-1}
// (yprev, for the adaptive restart); the stage: mu = grad F(x~_{s-1}), x_k, z_k, z_0, gbar_k.
#define SGDX_DASVRDA_STATE(X) \
  X(torch::Tensor, xt1, {})   \
  X(torch::Tensor, xt2, {})   \
  X(torch::Tensor, zt, {})    \
  X(torch::Tensor, yt, {})    \
  X(torch::Tensor, yprev, {}) \
  X(torch::Tensor, mu, {})    \
  X(torch::Tensor, x, {})     \
  X(torch::Tensor, z, {})     \
  X(torch::Tensor, z0, {})    \
  X(torch::Tensor, gbar, {})

struct SGDX_API DASVRDAParamState : public torch::optim::OptimizerCloneableParamState<DASVRDAParamState> {
  SGDX_FIELDS(SGDX_DASVRDA_STATE)
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};
#undef SGDX_DASVRDA_STATE

/// n, b, m, L, lr and the restart rule come from the first group; l1 and l2 of the
/// prox are per group (e.g. none on biases).
class SGDX_API DASVRDA : public VROptimizerBase {
 public:
  explicit DASVRDA(std::vector<torch::Tensor> params, const DASVRDAOptions& options);
  explicit DASVRDA(const std::vector<torch::optim::OptimizerParamGroup>& groups,
                   const DASVRDAOptions& defaults);
  torch::Tensor step(LossClosure batch) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  int64_t restarts() const { return static_cast<int64_t>(counters_.at("restarts")); }

 private:
  void start_outer_loop(const std::vector<torch::Tensor>& params);
  void compute_y(const std::vector<torch::Tensor>& params);
  bool restart_now(const std::vector<torch::Tensor>& params);
  void start_stage(const std::vector<torch::Tensor>& params);
  torch::Tensor inner_step(const std::vector<torch::Tensor>& params, const LossClosure& batch);
  void end_stage(const std::vector<torch::Tensor>& params);
};

}  // namespace sgdx::optim

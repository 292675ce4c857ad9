#pragma once
// Accelerated variance-reduced methods for P(x) = (1/n) sum f_i(x) + R(x), R the
// elastic net, through closures like sgdx::optim::SVRG (a full-gradient closure,
// and a minibatch closure that step() evaluates at the points it needs).
//
// Katyusha: Allen-Zhu, "Katyusha: The First Direct Acceleration of Stochastic
// Gradient Methods", STOC 2017 / JMLR 2018 (mini-batch, option I):
//   x_{k+1} = tau1 z_k + tau2 x~ + (1 - tau1 - tau2) y_k
//   v = mu + (1/b) sum [grad f_i(x_{k+1}) - grad f_i(x~)]
//   z_{k+1} = prox_{alpha R}(z_k - alpha v),  y_{k+1} = prox_{R/(3L)}(x_{k+1} - v/(3L))
//   x~ = (1 + alpha sigma)^j-weighted average of the stage's y's
// DASVRDA: Murata & Suzuki, "Doubly Accelerated Stochastic Variance Reduced Dual
// Averaging Method for Regularized Empirical Risk Minimization", NeurIPS 2017: an
// accelerated outer loop (momentum on stage outputs, theta~_s) around
// One-Stage-AccSVRDA (dual averaging of the variance-reduced gradients centred at
// z_0), with restarts none / periodic / adaptive. The formulas are in
// ../shared/specs/variance_reduced.md; the parameters hold y_k (Katyusha) or x_k (DASVRDA).
#include <torch/optim/optimizer.h>

#include <torch/serialize/archive.h>
#include "sgdx/optim/amp_step.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sgdx::optim {

struct KatyushaOptions : public torch::optim::OptimizerCloneableOptions<KatyushaOptions> {
  KatyushaOptions(double L);  // NOLINT(google-explicit-constructor): the required smoothness L
  TORCH_ARG(double, L);
  TORCH_ARG(int64_t, n) = 0;  ///< components (required)
  TORCH_ARG(int64_t, b) = 1;
  TORCH_ARG(int64_t, m) = 0;  ///< inner steps; 0: ceil(n / b)
  TORCH_ARG(double, l1) = 0.0;
  TORCH_ARG(double, l2) = 0.0;  ///< also the strong convexity sigma

 public:
  int64_t inner_steps() const { return m() > 0 ? m() : (n() + b() - 1) / b(); }
  void validate() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  /// 1 / (3L), the y-step; set_lr sets L accordingly.
  double get_lr() const override;
  void set_lr(const double lr) override;
};

enum class Restart : int64_t { none = 0, periodic = 1, adaptive = 2 };

struct DASVRDAOptions : public torch::optim::OptimizerCloneableOptions<DASVRDAOptions> {
  DASVRDAOptions(double L);  // NOLINT(google-explicit-constructor): the average smoothness L-bar
  TORCH_ARG(double, L);
  TORCH_ARG(int64_t, n) = 0;
  TORCH_ARG(int64_t, b) = 0;  ///< 0: ceil(sqrt(n))
  TORCH_ARG(int64_t, m) = 0;  ///< 0: ceil(n / b)
  TORCH_ARG(double, lr) = 0;  ///< eta; 0: the theory value 1 / ((1 + gamma (m + 1) / b) L)
  TORCH_ARG(double, l1) = 0.0;
  TORCH_ARG(double, l2) = 0.0;
  TORCH_ARG(Restart, restart) = Restart::adaptive;
  TORCH_ARG(int64_t, restart_period) = 0;  ///< periodic: 0 = 1 + ceil(sqrt(L/l2) (b/n + 1/sqrt(n)))

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
};

/// Per-parameter vectors of a variance-reduced method, by name.
struct VRParamState : public torch::optim::OptimizerCloneableParamState<VRParamState> {
  std::map<std::string, torch::Tensor> v;
  torch::Tensor& operator[](const std::string& k) { return v[k]; }
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

/// Shared machinery: parameters, closures, evaluation counting, counters.
class VROptimizerBase : public torch::optim::Optimizer, public AmpScaledStep {
 public:
  using Optimizer::Optimizer;
  /// A skipped step (found_inf) evaluates no closure and changes nothing;
  /// grad_scale divides the gradients every closure leaves (the batch and the full-gradient one).
  torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                            LossClosure batch) override {
    return detail::closure_step_scaled(*this, "VR optimizer", grad_scale, found_inf, std::move(batch),
                                       &full_gradient_);
  }
  void set_full_gradient_closure(LossClosure full_gradient) { full_gradient_ = std::move(full_gradient); }
  /// Component-gradient evaluations so far (n per full gradient, b per minibatch gradient).
  int64_t gradient_evaluations() const { return evaluations_; }

 protected:
  LossClosure full_gradient_;
  int64_t evaluations_ = 0;
  std::map<std::string, double> counters_;  // saved with the state
  std::vector<torch::Tensor> params() const;
  /// The parameter group of each entry of params().
  std::vector<size_t> param_group_indices() const;
  VRParamState& state_of(const torch::Tensor& p);
  /// Sets the parameters to the named vectors, calls `f` with gradients enabled and
  /// fresh .grad, and returns the gradients (zeros where undefined).
  std::vector<torch::Tensor> grads_at(const std::string& point, const LossClosure& f,
                                      torch::Tensor* loss = nullptr);
  void set_params(const std::string& point);
  void save_base(torch::serialize::OutputArchive& archive) const;
  void load_base(torch::serialize::InputArchive& archive);
};

/// n, b, m and L (and sigma = l2 for Katyusha's tau1) come from the first group;
/// l1 and l2 of the prox are per group (e.g. none on biases).
class Katyusha : public VROptimizerBase {
 public:
  explicit Katyusha(std::vector<torch::Tensor> params, KatyushaOptions options);
  explicit Katyusha(const std::vector<torch::optim::OptimizerParamGroup>& groups, KatyushaOptions defaults);
  torch::Tensor step(LossClosure batch) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
};

class DASVRDA : public VROptimizerBase {
 public:
  explicit DASVRDA(std::vector<torch::Tensor> params, DASVRDAOptions options);
  explicit DASVRDA(const std::vector<torch::optim::OptimizerParamGroup>& groups, DASVRDAOptions defaults);
  torch::Tensor step(LossClosure batch) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  int64_t restarts() const { return static_cast<int64_t>(counters_.at("restarts")); }
};

}  // namespace sgdx::optim

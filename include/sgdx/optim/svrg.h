#pragma once
// Proximal SVRG: Johnson & Zhang, "Accelerating Stochastic Gradient Descent using
// Predictive Variance Reduction", NeurIPS 2013; Xiao & Zhang, "A Proximal
// Stochastic Gradient Method with Progressive Variance Reduction", SIAM J. Optim.
// 2014. For P(x) = (1/n) sum f_i(x) + R(x), R the elastic net l1|x|_1 + l2/2 |x|^2:
//   per stage: x~ = x, mu = grad F(x~)                           (full pass)
//   m times:   v = (1/b) sum_{i in I} [grad f_i(x) - grad f_i(x~)] + mu
//              x = prox_{lr R}(x - lr v)
// The optimizer works through closures on any model: a full-gradient closure
// (set_full_gradient_closure: grad F at the current parameters into .grad) and,
// in step(), a closure for the current minibatch that it evaluates at x~ and at x.
#include <torch/optim/optimizer.h>

#include <torch/serialize/archive.h>
#include "sgdx/optim/amp_step.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace sgdx::optim {

/// prox_{c R}(v) for R = l1 |x|_1 + (l2/2) |x|^2: sign(v) max(|v| - c l1, 0) / (1 + c l2), in place.
void elastic_net_prox_(at::Tensor& v, double c, double l1, double l2);

enum class SnapshotRule : int64_t { last = 0, random = 1 };

/// n, b, m, snapshot and seed are read from the first parameter group; lr, l1
/// and l2 may differ per group (e.g. no regularisation on biases).
struct SVRGOptions : public torch::optim::OptimizerCloneableOptions<SVRGOptions> {
  SVRGOptions(double lr);  // NOLINT(google-explicit-constructor): LibTorch pattern
  TORCH_ARG(double, lr);
  TORCH_ARG(int64_t, n) = 0;  ///< number of components f_i (required)
  TORCH_ARG(int64_t, b) = 1;  ///< minibatch size
  TORCH_ARG(int64_t, m) = 0;  ///< inner steps per stage; 0: ceil(2n / b)
  TORCH_ARG(double, l1) = 0.0;
  TORCH_ARG(double, l2) = 0.0;
  TORCH_ARG(SnapshotRule, snapshot) = SnapshotRule::last;
  TORCH_ARG(uint64_t, seed) = 0;

 public:
  int64_t inner_steps() const { return m() > 0 ? m() : (2 * n() + b() - 1) / b(); }
  void validate() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
  friend bool operator==(const SVRGOptions& a, const SVRGOptions& b);
};

struct SVRGParamState : public torch::optim::OptimizerCloneableParamState<SVRGParamState> {
  TORCH_ARG(torch::Tensor, snapshot);   ///< x~
  TORCH_ARG(torch::Tensor, full_grad);  ///< mu = grad F(x~)
  TORCH_ARG(torch::Tensor, candidate);  ///< the random inner iterate (SnapshotRule::random)

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class SVRG : public torch::optim::Optimizer, public AmpScaledStep {
 public:
  explicit SVRG(const std::vector<torch::optim::OptimizerParamGroup>& param_groups, SVRGOptions defaults);
  explicit SVRG(std::vector<torch::Tensor> params, SVRGOptions defaults);

  /// The closure that puts grad F(x) (the mean over all n components) into
  /// the parameters' .grad at the current parameters and returns F(x).
  void set_full_gradient_closure(LossClosure full_gradient);

  /// One inner step. `batch` must put the mean gradient of the *same* minibatch
  /// into .grad each time it is called (it is called at x~ and at x) and return
  /// its loss; the loss at x is returned.
  torch::Tensor step(LossClosure batch) override;
  /// A skipped step (found_inf) evaluates no closure and changes nothing;
  /// grad_scale divides the gradients every closure leaves (the batch and the full-gradient one).
  torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                            LossClosure batch) override {
    return detail::closure_step_scaled(*this, "SVRG", grad_scale, found_inf, std::move(batch),
                                       &full_gradient_);
  }
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Component-gradient evaluations so far (n per full pass, 2b per step).
  int64_t gradient_evaluations() const { return evaluations_; }
  int64_t stage() const { return stage_; }

  /// Adds a group and keeps its own options (see RSGD::add_param_group).
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

 private:
  LossClosure full_gradient_;
  int64_t inner_ = 0, stage_ = 0, chosen_ = 0, evaluations_ = 0;
  const SVRGOptions& options_of(size_t group) const;
};

}  // namespace sgdx::optim

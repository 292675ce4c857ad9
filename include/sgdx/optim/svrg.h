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

#include "sgdx/export.h"
#include "sgdx/optim/detail/fields.h"
#include "sgdx/optim/vr_base.h"

#include <cstdint>
#include <ostream>
#include <vector>

namespace sgdx::optim {

enum class SnapshotRule : int64_t { last = 0, random = 1 };

// The fields of SVRGOptions (type, name, default), listed once: declaration, archive
// keys, == and <<. n: the number of components f_i (required); b: the minibatch size;
// m: inner steps per stage, 0: ceil(2n / b). lr is the constructor's argument.
#define SGDX_SVRG_OPTIONS(X)                    \
  X(double, lr, 0.0)                            \
  X(int64_t, n, 0)                              \
  X(int64_t, b, 1)                              \
  X(int64_t, m, 0)                              \
  X(double, l1, 0.0)                            \
  X(double, l2, 0.0)                            \
  X(SnapshotRule, snapshot, SnapshotRule::last) \
  X(uint64_t, seed, 0)

/// n, b, m, snapshot and seed are read from the first parameter group; lr, l1
/// and l2 may differ per group (e.g. no regularisation on biases).
struct SGDX_API SVRGOptions : public torch::optim::OptimizerCloneableOptions<SVRGOptions> {
  SVRGOptions(double lr);  // NOLINT(google-explicit-constructor): LibTorch pattern
  SGDX_FIELDS(SGDX_SVRG_OPTIONS)

 public:
  int64_t inner_steps() const { return m() > 0 ? m() : (2 * n() + b() - 1) / b(); }
  void validate() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
  friend bool operator==(const SVRGOptions& a, const SVRGOptions& b) { return detail::fields_equal(a, b); }
  friend std::ostream& operator<<(std::ostream& os, const SVRGOptions& o) {
    return detail::print_fields(os, "SVRGOptions", o);
  }
};
#undef SGDX_SVRG_OPTIONS

// x~, mu = grad F(x~), and the random inner iterate (SnapshotRule::random).
#define SGDX_SVRG_STATE(X)        \
  X(torch::Tensor, snapshot, {})  \
  X(torch::Tensor, full_grad, {}) \
  X(torch::Tensor, candidate, {})

struct SGDX_API SVRGParamState : public torch::optim::OptimizerCloneableParamState<SVRGParamState> {
  SGDX_FIELDS(SGDX_SVRG_STATE)
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};
#undef SGDX_SVRG_STATE

class SGDX_API SVRG : public VROptimizerBase {
 public:
  explicit SVRG(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                const SVRGOptions& defaults);
  explicit SVRG(std::vector<torch::Tensor> params, const SVRGOptions& defaults);

  /// One inner step. `batch` must put the mean gradient of the *same* minibatch
  /// into .grad each time it is called (it is called at x~ and at x) and return
  /// its loss; the loss at x is returned. (step_scaled: see VROptimizerBase.)
  torch::Tensor step(LossClosure batch) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Component-gradient evaluations so far: n per full pass, 2b per step.
  using VROptimizerBase::gradient_evaluations;
  int64_t stage() const { return stage_; }

  /// Adds a group and keeps its own options (see RSGD::add_param_group).
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

 private:
  int64_t inner_ = 0, stage_ = 0, chosen_ = 0;
  void start_stage(const std::vector<torch::Tensor>& params);
  void finish_inner_step(const std::vector<torch::Tensor>& params);
};

}  // namespace sgdx::optim

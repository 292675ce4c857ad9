#pragma once
// The shared part of sgdx's variance-reduced methods (SVRG, Katyusha, DASVRDA) for
// P(x) = (1/n) sum f_i(x) + R(x), R the elastic net: the closures (a full-gradient
// one, and the minibatch one that step() evaluates at the points it needs), the
// count of component-gradient evaluations, and the prox of R.
//
// Data-parallel (set_communicator): every gradient a closure leaves is reduced over
// the ranks inside step(): the minibatch closure's is averaged (each rank's closure
// covers its equal share of the global minibatch of b), the full-gradient closure's
// is averaged too (equal shards of the n components), or weighted by each rank's
// component count when set_local_components() was called (unequal shards). The
// returned loss is the mean over ranks. n and b are the global counts. Every other
// quantity (snapshots, restarts, the random snapshot) is a function of the state,
// identical on every rank, so ranks stay bit-identical without further collectives.
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "sgdx/export.h"
#include "sgdx/optim/amp_step.h"
#include "sgdx/optim/detail/param_groups.h"
#include "sgdx/optim/distributed.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sgdx::optim {

/// prox_{c R}(v) for R = l1 |x|_1 + (l2/2) |x|^2: sign(v) max(|v| - c l1, 0) / (1 + c l2), in place.
SGDX_API void elastic_net_prox_(at::Tensor& v, double c, double l1, double l2);

class SGDX_API VROptimizerBase : public torch::optim::Optimizer,
                                 public AmpScaledStep,
                                 public DistributedStep {
 public:
  /// A skipped step (found_inf) evaluates no closure and changes nothing;
  /// grad_scale divides the gradients every closure leaves (the batch and the full-gradient one).
  torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                            LossClosure batch) override;
  /// The closure that puts grad F(x) (the mean over all n components) into the
  /// parameters' .grad at the current parameters and returns F(x).
  void set_full_gradient_closure(LossClosure full_gradient) { full_gradient_ = std::move(full_gradient); }
  /// Data-parallel with unequal shards: this rank's full-gradient closure is the mean
  /// over `components` components, and the global full gradient is
  /// sum_r components_r g_r / sum_r components_r. 0 (the default): equal shards, the
  /// plain mean over ranks. Every rank must call it alike (it changes the collectives).
  void set_local_components(int64_t components);
  /// Component-gradient evaluations so far (n per full gradient, b per minibatch gradient).
  int64_t gradient_evaluations() const { return evaluations_; }

 protected:
  /// `name` names the optimizer in errors.
  VROptimizerBase(std::unique_ptr<torch::optim::OptimizerOptions> defaults, const char* name);

  template <typename Options>
  void add_groups(const std::vector<torch::optim::OptimizerParamGroup>& groups) {
    for (const auto& g : groups) detail::add_param_group_keeping_options<Options>(*this, g, name_);
  }
  /// The options of group `g` (of the first group: the optimizer-wide ones).
  template <typename Options>
  const Options& options_of(size_t g) const {
    return detail::options_as<Options>(param_groups_[g].options(), g, name_);
  }
  /// The start of every step(): the closures are there.
  void check_closures(const LossClosure& batch) const;
  /// The parameters that require gradients, and the group of each.
  std::vector<torch::Tensor> params() const;
  std::vector<size_t> param_group_indices() const;
  template <typename State>
  State& state_of(const torch::Tensor& p) {
    auto& slot = state_[p.unsafeGetTensorImpl()];
    if (!slot) slot = std::make_unique<State>();
    return static_cast<State&>(*slot);
  }
  /// get(state) for each parameter: the point the parameters are set to.
  template <typename State, typename Get>
  std::vector<torch::Tensor> point(Get get) {
    std::vector<torch::Tensor> out;
    for (const auto& p : params()) out.push_back(get(state_of<State>(p)));
    return out;
  }
  /// Copies `values` into the parameters (in params() order).
  void set_params(const std::vector<torch::Tensor>& values);
  /// Sets the parameters to `at` (when given), calls `f` with gradients enabled and
  /// fresh .grad, and returns the gradients (zeros where undefined), averaged over
  /// the ranks (with the loss) when there is a communicator.
  std::vector<torch::Tensor> grads_at(const std::vector<torch::Tensor>* at, const LossClosure& f,
                                      torch::Tensor* loss = nullptr, bool reduce = true);
  /// grad F at `at` (or the current parameters) through the full-gradient closure: n evaluations.
  std::vector<torch::Tensor> full_gradient_at(const std::vector<torch::Tensor>* at, int64_t n);

  /// Loads the state and group options; every state tensor moves to its parameter's device.
  template <typename State, typename Options>
  void load_state(torch::serialize::InputArchive& archive) {
    detail::load_then_place<State, Options>(*this, archive, [](const torch::Tensor& p, State& st) {
      State::for_each_field([&](const char*, torch::Tensor& t) { t = detail::to_device_of(t, p); }, st);
    });
  }
  /// The optimizer-wide counters of Katyusha and DASVRDA ("vr/..." keys), saved with the state.
  void save_counters(torch::serialize::OutputArchive& archive) const;
  void load_counters(torch::serialize::InputArchive& archive);

  LossClosure full_gradient_;
  int64_t local_components_ = 0;
  int64_t evaluations_ = 0;
  std::map<std::string, double> counters_;
  const char* name_;
};

}  // namespace sgdx::optim

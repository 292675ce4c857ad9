#pragma once
// GradQueue-SGDM: SGD with momentum whose gradient is reinforced by its
// scarcity relative to a queue of recent gradients. After Al Hasib, "Grad Queue:
// A probabilistic framework to reinforce sparse gradients", arXiv:2404.16917.
// The paper's exact formulas could not be read; the rule below is sgdx's own,
// faithful to its description, bounded, and equal to SGD-momentum when every
// Delta-rho is 1 (docs/gradqueue.md). Per parameter tensor:
//   d = grad + weight_decay * theta
//   window: the last L raw d's (ring buffer of capacity q_max, running sums S1, S2)
//   n < q_min: Delta-rho = 1 (warm-up)
//   else mu = S1/n, sigma = sqrt(max(S2/n - mu^2, 0)),
//        element: z = |d - mu| / (sigma + eps) / sqrt(2/pi)
//        tensor:  z = ||d - mu|| / (sqrt(sum sigma^2) + eps)
//        Delta-rho = clip(z^kappa, rho_min, rho_max)
//   push d; v = momentum v + (1 - dampening) Delta-rho d  (v = Delta-rho d on the first step)
//   theta -= lr * (nesterov ? Delta-rho d + momentum v : v)
// L follows the loss trend: a loss EMA (factor loss_beta) that went down grows
// L by one (<= q_max), otherwise L shrinks by one (>= q_min); no loss: L = q_init.
//
// The clustered variant (clustered_step) clusters the batch on per-sample
// features (k-means), weights each cluster's mean gradient by its own scarcity
// and steps on G* = sum_k |C_k|/B Delta-rho_k G_k (stages: sgdx/optim/detail/gradqueue_stages.h).
// The window's state machine (warm-up, filling, full) is described in src/optim/gradqueue_window.h.
//
// Data-parallel (set_communicator): the plain step works on .grad averaged by the user
// (sgdx::dist::DataParallel); the loss that moves L is the mean over ranks of each
// rank's loss (a closure's or observe_loss()'s; every rank gives one, or none does).
// The clustered step gathers every rank's features and losses, clusters the global
// batch identically on every rank, sums each cluster's gradients over the ranks and
// leaves the global batch-mean gradient in .grad (no averaging needed after it).
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "sgdx/export.h"
#include "sgdx/ops/cuda_kernels.h"
#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/optim/amp_step.h"
#include "sgdx/optim/distributed.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <utility>
#include <vector>

namespace sgdx::ops {
class PerSampleGradients;
}

namespace sgdx::optim {

enum class GradQueueGranularity : int64_t { element = 0, tensor = 1 };
/// exact: a ring buffer of q_max gradients per tensor (q_max x the parameters'
/// memory) and exact window statistics. ema: no queue; S1/S2 are running
/// moments with rate 1/min(n, L) (2 x the parameters' memory), an approximation
/// of the window for models whose queue would not fit.
enum class GradQueueStorage : int64_t { exact = 0, ema = 1 };
/// Clustered step: one Delta-rho per cluster and parameter tensor, or one per
/// cluster from whole-model norms.
enum class GradQueueScope : int64_t { per_tensor = 0, global = 1 };

/// Where an option applies. group: per parameter group. optimizer: optimizer-wide,
/// read from defaults() only (a group may not set another value: GradQueueSGDM refuses
/// one at add_param_group and at the next step); saved with the optimizer. process:
/// optimizer-wide and, like a backend, how this process computes: not saved.
enum class GradQueueOptionScope { group, optimizer, process };

// Every option, listed once: X(type, name, default, scope). The declarations below,
// serialisation, equality, printing and the optimizer-wide check all expand it.
//   resync_every: exact storage: recompute S1/S2 from the queue every this many pushes
//     (0: never), bounding the rounding drift of the running sums.
//   loss_beta: the loss EMA that moves the window length.
//   clusters, kmeans_iters, kmeans_tol, scope, seed: the clustered step.
//   fused_cuda: CUDA parameters: the plain step through one multi-tensor
//     gradqueue_step_cuda_ launch per group (instead of the ATen composition per tensor,
//     with one host read per step instead of one per tensor), the clustered step's k-means
//     through kmeans_cuda (CUDA float32 features within its limits) and its statistics
//     through gradqueue_cluster_stats_cuda. Off by default until the kernels have passed
//     their tests on a GPU: the default comes from sgdx/ops/cuda_kernels.h.
// clang-format off
#define SGDX_GRADQUEUE_OPTIONS(X)                                                         \
  X(double, lr, 0.0, group)                                                               \
  X(double, momentum, 0.9, group)                                                         \
  X(double, dampening, 0.0, group)                                                        \
  X(bool, nesterov, false, group)                                                         \
  X(double, weight_decay, 0.0, group)                                                     \
  X(int64_t, q_min, 4, group)                                                             \
  X(int64_t, q_init, 8, group)                                                            \
  X(int64_t, q_max, 32, group)                                                            \
  X(double, rho_min, 0.5, group)                                                          \
  X(double, rho_max, 2.0, group)                                                          \
  X(double, kappa, 1.0, group)                                                            \
  X(double, eps, 1e-8, group)                                                             \
  X(GradQueueGranularity, granularity, GradQueueGranularity::element, group)              \
  X(GradQueueStorage, storage, GradQueueStorage::exact, group)                            \
  X(int64_t, resync_every, 256, group)                                                    \
  X(double, loss_beta, 0.9, optimizer)                                                    \
  X(int64_t, clusters, 1, optimizer)                                                      \
  X(int64_t, kmeans_iters, 10, optimizer)                                                 \
  X(double, kmeans_tol, 1e-4, optimizer)                                                  \
  X(GradQueueScope, scope, GradQueueScope::per_tensor, optimizer)                         \
  X(uint64_t, seed, 0, optimizer)                                                         \
  X(bool, fused_cuda, (ops::fused_cuda_default(ops::CudaKernel::gradqueue_step) &&        \
                       ops::fused_cuda_default(ops::CudaKernel::gradqueue_cluster_stats) && \
                       ops::fused_cuda_default(ops::CudaKernel::kmeans)), process)
// clang-format on

struct SGDX_API GradQueueSGDMOptions : public torch::optim::OptimizerCloneableOptions<GradQueueSGDMOptions> {
  GradQueueSGDMOptions(double lr);  // NOLINT(google-explicit-constructor): LibTorch pattern
#define SGDX_GQ_DECLARE(T, name, init, where) TORCH_ARG(T, name) = init;
  SGDX_GRADQUEUE_OPTIONS(SGDX_GQ_DECLARE)
#undef SGDX_GQ_DECLARE

 public:
  /// Throws c10::Error naming the first invalid option and its value.
  void validate() const;
  /// The options' names in declaration order, and where each applies.
  static const std::vector<std::pair<const char*, GradQueueOptionScope>>& fields();
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
  friend SGDX_API bool operator==(const GradQueueSGDMOptions& lhs, const GradQueueSGDMOptions& rhs);
};

/// "GradQueueSGDMOptions(lr=0.1, momentum=0.9, ...)", every option in declaration order.
SGDX_API std::ostream& operator<<(std::ostream& out, const GradQueueSGDMOptions& o);

struct SGDX_API GradQueueSGDMParamState
    : public torch::optim::OptimizerCloneableParamState<GradQueueSGDMParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(torch::Tensor, momentum_buffer);  ///< undefined before the first step
  TORCH_ARG(torch::Tensor, queue);            ///< [q_max, numel] (exact storage)
  TORCH_ARG(torch::Tensor, s1);               ///< window sum of d (ema: running mean)
  TORCH_ARG(torch::Tensor, s2);               ///< window sum of d^2 (ema: running mean)
  TORCH_ARG(int64_t, head) = 0;               ///< queue row of the next push
  TORCH_ARG(int64_t, count) = 0;              ///< gradients in the window
  TORCH_ARG(int64_t, window) = 0;             ///< L
  TORCH_ARG(int64_t, pushes) = 0;

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend SGDX_API bool operator==(const GradQueueSGDMParamState& lhs, const GradQueueSGDMParamState& rhs);
};

/// What the last step did (for logs).
struct SGDX_API GradQueueStepInfo {
  double mean_rho = 1.0;               ///< mean Delta-rho over all updated elements
  int64_t window = 0;                  ///< L of the first updated tensor
  std::vector<int64_t> cluster_sizes;  ///< clustered step: |C_k|
  int64_t kmeans_iterations = 0;
};

class SGDX_API GradQueueSGDM : public torch::optim::Optimizer, public AmpScaledStep, public DistributedStep {
 public:
  explicit GradQueueSGDM(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                         const GradQueueSGDMOptions& defaults);
  explicit GradQueueSGDM(std::vector<torch::Tensor> params, const GradQueueSGDMOptions& defaults);

  /// Plain variant on the parameters' .grad. A closure's return value (the
  /// batch loss) drives the window length.
  torch::Tensor step(LossClosure closure = nullptr) override;
  /// The plain step under a gradient scaler (sgdx/optim/amp_step.h): a skipped step
  /// leaves every tensor, the ring (head, count, window), the loss EMA and the
  /// step counters as they were, and drops the observed loss of that batch.
  torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                            LossClosure closure = nullptr) override;

  /// Tells the optimizer the batch loss of the coming step (instead of a closure);
  /// it enters the loss EMA when that step is taken.
  void observe_loss(double loss);

  /// Clustered variant. `losses` [B]: per-sample losses with their graph;
  /// `features` [B, d]: per-sample features (detached). Clusters the batch into
  /// `clusters` groups, forms each cluster's mean gradient, weights it by its
  /// scarcity and steps. Runs the backward itself: afterwards each parameter's
  /// .grad holds the plain batch-mean gradient. With `capture` (a
  /// PerSampleGradients of the model being optimised) it is one backward plus
  /// per-cluster sums from the captured layer factors; without, one autograd pass
  /// per cluster (the reference). The mean loss drives the window length. Returns the batch-mean loss
  /// (detached). Data-parallel: `losses` and `features` are this rank's rows (any count
  /// per rank); clusters, weights, the loss and .grad are the global batch's.
  torch::Tensor clustered_step(const torch::Tensor& losses, const torch::Tensor& features,
                               ops::PerSampleGradients* capture = nullptr);

  /// Reads the step's Delta-rho sums from the device when called (not in the step).
  const GradQueueStepInfo& last_step_info() const;
  /// Bytes of optimizer state (queues, sums, momentum) held now.
  int64_t state_bytes() const;

  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);

 private:
  const GradQueueSGDMOptions& defaults_options() const;
  /// The optimizer-wide options live in defaults(): refuses a group that set another
  /// value since the last call, then copies the defaults' into every group.
  void sync_optimizer_wide();
  GradQueueSGDMParamState& state_for(const torch::Tensor& p, const GradQueueSGDMOptions& o);
  /// Pushes `grad` (+ weight decay unless `direction` is given) into the window and
  /// takes the momentum step on Delta-rho * d, or on `direction` when defined
  /// (the clustered step's G*). Returns the sum of Delta-rho (float64, on the device).
  at::Tensor push_and_step(const torch::Tensor& p, GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o,
                           const torch::Tensor& grad, const torch::Tensor& direction);
  /// The kernel operands of one push and step (p must be contiguous).
  ops::GradQueueTensor step_operands(const torch::Tensor& p, GradQueueSGDMParamState& st,
                                     const GradQueueSGDMOptions& o, const torch::Tensor& grad,
                                     const torch::Tensor& direction);

  /// The pending loss enters the EMA; `reduce`: first its mean over ranks (a collective).
  void take_pending_loss(bool reduce);

  double loss_ema_ = 0.0;
  bool has_loss_ema_ = false;
  std::optional<double> pending_loss_;
  int64_t pending_trend_ = 0;  // +1 grow, -1 shrink, 0 none
  uint64_t kmeans_calls_ = 0;
  mutable GradQueueStepInfo info_;
  at::Tensor rho_total_;              // sum of Delta-rho of the last step (device)
  double rho_elements_ = 0.0;         // elements it covers
  GradQueueSGDMOptions synced_{0.0};  // the optimizer-wide values last copied into the groups
};

}  // namespace sgdx::optim

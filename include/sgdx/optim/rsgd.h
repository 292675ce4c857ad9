#pragma once
// R-SGD: Huang & Toyoizumi, "Reinforced stochastic gradient descent for deep
// neural network learning", arXiv:1701.07974. Only the abstract was readable;
// this rule is sgdx's reconstruction of it (see docs/rsgd.md):
//   g_t = grad + wd * theta
//   Gamma_t = min(max_prob, 1 - gamma0 * gamma^t)
//   xi ~ Bernoulli(Gamma_t)          (per element, or one draw per tensor)
//   h_t = g_t + xi * m,   m = h_{t-1} (accumulated) or g_{t-1} (previous)
//   theta -= lr * h_t
// Warning: with memory=accumulated and Gamma_t -> 1, h sums every past
// gradient (heavy ball with momentum 1): hence the default max_prob = 0.9; the
// literal reading (max_prob 1) needs a decaying lr (any LibTorch LR scheduler).
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include "sgdx/export.h"
#include "sgdx/ops/cuda_kernels.h"
#include "sgdx/optim/amp_step.h"
#include "sgdx/optim/detail/fields.h"
#include "sgdx/optim/distributed.h"

#include <cstdint>
#include <memory>
#include <ostream>
#include <vector>

namespace sgdx::optim {

enum class RSGDGranularity : int64_t { element = 0, tensor = 1 };
enum class RSGDMemory : int64_t { accumulated = 0, previous = 1 };

// The fields of RSGDOptions (type, name, default), listed once: declaration, archive
// keys, == and <<. max_prob is 0.9, not the literal 1: with accumulated memory and
// Gamma -> 1 the memory sums every past gradient and a constant lr degrades late
// (docs/rsgd.md, "Defaults"). lr is the constructor's argument.
#define SGDX_RSGD_OPTIONS(X)                                \
  X(double, lr, 0.0)                                        \
  X(double, gamma, 0.999)                                   \
  X(double, gamma0, 1.0)                                    \
  X(double, max_prob, 0.9)                                  \
  X(RSGDGranularity, granularity, RSGDGranularity::element) \
  X(RSGDMemory, memory, RSGDMemory::accumulated)            \
  X(double, weight_decay, 0.0)                              \
  X(uint64_t, seed, 0)

struct SGDX_API RSGDOptions : public torch::optim::OptimizerCloneableOptions<RSGDOptions> {
  RSGDOptions(double lr);  // NOLINT(google-explicit-constructor): LibTorch pattern
  SGDX_FIELDS(SGDX_RSGD_OPTIONS)
  /// CUDA parameters: the fused kernel instead of the ATen composition. Defaults
  /// to what a GPU run verified (sgdx/ops/cuda_kernels.h); not in checkpoints (it
  /// chooses how this process computes, like a backend), hence not in the list.
  TORCH_ARG(bool, fused_cuda) = ops::fused_cuda_default(ops::CudaKernel::rsgd_step);

 public:
  /// Gamma_t for optimizer step t >= 1.
  double reinforcement_probability(int64_t step) const;
  /// Throws c10::Error naming the first invalid option and its value.
  void validate() const;

  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
  friend bool operator==(const RSGDOptions& a, const RSGDOptions& b) {
    return detail::fields_equal(a, b) && a.fused_cuda() == b.fused_cuda();
  }
  friend std::ostream& operator<<(std::ostream& os, const RSGDOptions& o) {
    return detail::print_fields(os, "RSGDOptions", o) << " fused_cuda=" << o.fused_cuda();
  }
};
#undef SGDX_RSGD_OPTIONS

#define SGDX_RSGD_STATE(X) \
  X(int64_t, step, 0)      \
  X(torch::Tensor, memory, {}) /* h_{t-1} (memory=accumulated) or g_{t-1} (memory=previous) */

struct SGDX_API RSGDParamState : public torch::optim::OptimizerCloneableParamState<RSGDParamState> {
  SGDX_FIELDS(SGDX_RSGD_STATE)
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  friend bool operator==(const RSGDParamState& a, const RSGDParamState& b) {
    return detail::fields_equal(a, b);
  }
};
#undef SGDX_RSGD_STATE

/// Data-parallel: the step is a function of .grad (averaged by the user) and of the
/// step count and seed (the Bernoulli draws), so ranks agree without collectives; the
/// communicator (set_communicator) only makes a mixed-precision skip global.
class SGDX_API RSGD : public torch::optim::Optimizer, public AmpScaledStep, public DistributedStep {
 public:
  explicit RSGD(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                const RSGDOptions& defaults);
  explicit RSGD(std::vector<torch::Tensor> params, const RSGDOptions& defaults);

  torch::Tensor step(LossClosure closure = nullptr) override;
  torch::Tensor step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                            LossClosure closure = nullptr) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Adds a group and keeps its own options. (LibTorch >= 2.8 replaces the
  /// explicit options of a custom optimizer's group with the defaults.)
  void add_param_group(const torch::optim::OptimizerParamGroup& param_group);
};

}  // namespace sgdx::optim

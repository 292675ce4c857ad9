#pragma once
// Cosine learning-rate annealing as a LibTorch LRScheduler.
#include <torch/optim/optimizer.h>
#include <torch/optim/schedulers/lr_scheduler.h>

#include <cstdint>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::optim {

/// Cosine annealing over `total_steps` optimizer steps in the closed form of PyTorch's
/// CosineAnnealingLR (T_max = total_steps): step t uses
///   lr_t = eta_min + (lr_0 - eta_min) (1 + cos(pi t / total_steps)) / 2,
/// lr_0 being each parameter group's lr when the scheduler is made. Call step() after
/// every optimizer step (LibTorch's convention): it sets the lr of the next one. Past
/// total_steps the cosine continues, as PyTorch's closed form does.
class SGDX_API CosineLR : public torch::optim::LRScheduler {
 public:
  CosineLR(torch::optim::Optimizer& optimizer, int64_t total_steps, double eta_min = 0.0);

  /// The learning rate of group `group` at step t.
  double lr_at(size_t group, int64_t t) const;
  /// Steps taken so far (the step the current learning rates belong to).
  int64_t steps() const { return static_cast<int64_t>(step_count_); }
  /// Continues at step t (a resumed run): sets every group's lr to lr_t. LibTorch's
  /// schedulers have no state besides this count.
  void set_steps(int64_t t);

 private:
  std::vector<double> get_lrs() override;

  torch::optim::Optimizer& optimizer_;  // LRScheduler keeps its reference private
  std::vector<double> base_lrs_;
  int64_t total_steps_;
  double eta_min_;
};

}  // namespace sgdx::optim

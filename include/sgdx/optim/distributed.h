#pragma once
// Data-parallel optimizers (issue #17). The user averages the gradients in .grad
// (sgdx::dist::DataParallel::average_gradients) before step(); what an optimizer
// computes beyond .grad is made global here, so every rank takes the same step as
// one process on the combined batch, and every rank's state stays bit-identical:
//   - data-dependent scalars (GradQueue's loss trend, found_inf) are reduced in float64;
//   - gradients an optimizer evaluates itself (the variance-reduced methods' closures,
//     GradQueue's clustered step) are reduced with average_over_ranks_ / sum_over_ranks_.
// Decisions made from the (identical) state alone need no collective.
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

#include "sgdx/dist/communicator.h"

namespace sgdx::optim {

/// What an sgdx optimizer (and sgdx::amp::GradScaler) needs to agree with the other
/// ranks. Without a communicator (the default), or with a world of one, nothing is
/// reduced and the optimizer behaves exactly as in one process.
class DistributedStep {
 public:
  virtual ~DistributedStep() = default;
  /// The group over which every data-dependent value is reduced (all ranks must set one).
  void set_communicator(std::shared_ptr<dist::Communicator> comm) { comm_ = std::move(comm); }
  const std::shared_ptr<dist::Communicator>& communicator() const { return comm_; }

 protected:
  /// The group when it has more than one rank, else null: no collective at all.
  dist::Communicator* group() const { return comm_ && comm_->world_size() > 1 ? comm_.get() : nullptr; }

 private:
  std::shared_ptr<dist::Communicator> comm_;
};

namespace detail {

/// In place: every tensor becomes its sum over ranks, then is multiplied by `scale`
/// (1 / world for the mean). One all-reduce per (device, dtype): the tensors are
/// flattened into one buffer, so any shape and layout works. No-op when `comm` is null.
inline void reduce_over_ranks_(dist::Communicator* comm, const std::vector<at::Tensor>& tensors,
                               double scale) {
  if (comm == nullptr || comm->world_size() == 1) return;
  std::map<std::tuple<int, int, int>, std::vector<at::Tensor>> buckets;
  for (const auto& t : tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    buckets[{static_cast<int>(t.device().type()), t.device().index(), static_cast<int>(t.scalar_type())}]
        .push_back(t);
  }
  at::NoGradGuard no_grad;
  for (auto& [key, list] : buckets) {
    std::vector<at::Tensor> flat;
    for (const auto& t : list) flat.push_back(t.reshape({-1}));
    std::vector<at::Tensor> buffer = {at::cat(flat)};
    comm->all_reduce_sum(buffer);
    if (scale != 1.0) buffer[0].mul_(scale);
    int64_t offset = 0;
    for (const auto& t : list) {
      t.copy_(buffer[0].narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

/// In place: every tensor becomes its mean over ranks (equal per-rank weight).
inline void average_over_ranks_(dist::Communicator* comm, const std::vector<at::Tensor>& tensors) {
  if (comm == nullptr || comm->world_size() == 1) return;
  reduce_over_ranks_(comm, tensors, 1.0 / comm->world_size());
}

/// In place: every tensor becomes its sum over ranks.
inline void sum_over_ranks_(dist::Communicator* comm, const std::vector<at::Tensor>& tensors) {
  reduce_over_ranks_(comm, tensors, 1.0);
}

/// In place: found_inf (a mixed-precision overflow flag) becomes its maximum over
/// ranks, so a step one rank skips is skipped on every rank.
inline void agree_found_inf_(dist::Communicator* comm, const at::Tensor& found_inf) {
  if (comm == nullptr || comm->world_size() == 1 || !found_inf.defined()) return;
  std::vector<at::Tensor> t = {found_inf.detach().reshape({1}).to(at::kDouble)};
  comm->all_reduce_max(t);
  found_inf.copy_(t[0].reshape(found_inf.sizes()));
}

}  // namespace detail
}  // namespace sgdx::optim

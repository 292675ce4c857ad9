#pragma once
// sgdx-train across processes: the ranks of one invocation (torchrun's environment,
// sgdx::dist::from_env) and the few collective steps the trainer takes with them.
//
// Every rank holds the same model, optimizer and samplers (same seed, rank 0's
// parameters broadcast), draws the same global batch and trains on its own share
// of it; the gradients, losses and sampling scores of the shares are combined so
// that every rank takes the step one process takes on the whole batch. A world of
// one takes none of these steps: one process trains exactly as without them.
#include <ATen/ATen.h>
#include <fmt/core.h>

#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "sgdx/dist/communicator.h"

namespace sgdx_train {

/// An error every rank meets at the same point (a diverged loss, another rank's
/// refusal): rank 0 reports it, the other ranks exit with status 1 without a word.
class SharedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class World {
 public:
  World() : comm_(sgdx::dist::single_process()) {}
  explicit World(std::shared_ptr<sgdx::dist::Communicator> comm) : comm_(std::move(comm)) {}

  int rank() const { return comm_->rank(); }
  int size() const { return comm_->world_size(); }
  bool root() const { return rank() == 0; }
  bool multi() const { return size() > 1; }
  sgdx::dist::Communicator& comm() const { return *comm_; }
  const std::shared_ptr<sgdx::dist::Communicator>& comm_ptr() const { return comm_; }

  /// Rank r's share {offset, count} of `total` items in rank order: equal shares, the
  /// first total % size ranks one more.
  std::pair<int64_t, int64_t> share(int64_t total, int r) const {
    const int64_t w = size(), base = total / w, extra = total % w;
    return {r * base + std::min<int64_t>(r, extra), base + (r < extra ? 1 : 0)};
  }
  std::pair<int64_t, int64_t> share(int64_t total) const { return share(total, rank()); }

  /// Every rank's share (rows along dim 0) of `total` rows, concatenated in rank
  /// order: what one process computes on the whole batch. `local` has share(total)'s
  /// count of rows on this rank; the result is on `local`'s device.
  at::Tensor gather(const at::Tensor& local, int64_t total) const {
    if (!multi()) return local;
    const int64_t most = share(total, 0).second;
    auto sizes = local.sizes().vec();
    sizes[0] = most;
    auto padded = at::zeros(sizes, local.options().device(at::kCPU));
    padded.narrow(0, 0, local.size(0)).copy_(local);
    const auto all = comm_->all_gather(padded);  // [world, most, ...]
    std::vector<at::Tensor> parts;
    parts.reserve(size());
    for (int r = 0; r < size(); ++r) parts.push_back(all[r].narrow(0, 0, share(total, r).second));
    return at::cat(parts).to(local.device());
  }

  /// Sums of `values` over ranks, in float64 (one all-reduce).
  std::vector<double> sum(const std::vector<double>& values) const {
    if (!multi()) return values;
    std::vector<at::Tensor> t = {at::tensor(values, at::kDouble)};
    comm_->all_reduce_sum(t);
    return {t[0].data_ptr<double>(), t[0].data_ptr<double>() + t[0].numel()};
  }

  /// Runs `step` on every rank; when it throws on any rank, it throws on every rank:
  /// the failing rank its own error, the others a SharedError naming the first
  /// failing rank. One collective, so a refusal on one rank never leaves the others
  /// waiting in the next collective until the timeout.
  void together(const std::function<void()>& step) const {
    std::exception_ptr error;
    try {
      step();
    } catch (...) {
      error = std::current_exception();
    }
    if (!multi()) {
      if (error) std::rethrow_exception(error);
      return;
    }
    std::vector<at::Tensor> t = {at::full({1}, error ? double(size() - rank()) : 0.0, at::kDouble)};
    comm_->all_reduce_max(t);
    const auto first = size() - static_cast<int>(t[0].item<double>());
    if (error) std::rethrow_exception(error);
    if (first < size())
      throw SharedError(fmt::format("rank {} stopped the run with an error (see its message)", first));
  }

 private:
  std::shared_ptr<sgdx::dist::Communicator> comm_;
};

}  // namespace sgdx_train

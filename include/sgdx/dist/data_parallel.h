#pragma once
// Data-parallel gradients over a Communicator: every rank holds the same
// parameters, computes gradients on its own share of the global batch, and
// average_gradients() leaves every rank with the gradient of the combined batch
// (the mean over ranks of per-rank mean-loss gradients; equal per-rank batches).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "sgdx/dist/communicator.h"
#include "sgdx/export.h"

namespace sgdx::dist {

struct DataParallelOptions {
  /// Gradients are flattened into buckets of at most this many bytes (one
  /// all-reduce each); a tensor larger than a bucket travels alone.
  int64_t bucket_bytes = int64_t{25} << 20;
  /// Overlap the all-reduce with backward: a bucket starts as soon as backward
  /// has produced all of its gradients (and every earlier bucket has started).
  /// Call prepare_backward() before each backward that average_gradients() will
  /// average; gradients must start empty (zero_grad() with set_to_none). No other
  /// collective on this communicator may run between prepare_backward() and
  /// average_gradients(): buckets start mid-backward, and collectives match by order.
  bool overlap = false;
};

class SGDX_API DataParallel {
 public:
  /// `parameters` in the same order on every rank (a module's parameters()).
  DataParallel(std::vector<at::Tensor> parameters, std::shared_ptr<Communicator> comm,
               DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;  // the backward hooks point here
  DataParallel& operator=(const DataParallel&) = delete;

  /// Copies rank 0's values into every rank's tensors (parameters and, e.g.,
  /// buffers: running statistics), so all ranks start from the same model.
  void broadcast_from_root(std::vector<at::Tensor> tensors);
  /// broadcast_from_root(the parameters).
  void broadcast_parameters();

  /// Overlap mode: the next backward's gradients start their all-reduce as they
  /// appear (other backward passes, e.g. inside an optimizer's closure, are left alone).
  void prepare_backward();

  /// Each parameter's .grad becomes its mean over ranks. A parameter without a
  /// gradient on some ranks counts as zero there; one without a gradient on every
  /// rank keeps none (as in one process on the combined batch).
  void average_gradients();

  Communicator& comm() const { return *comm_; }
  const std::shared_ptr<Communicator>& comm_ptr() const { return comm_; }
  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }
  /// Gradient bytes one average_gradients() moves per rank (the all-reduce payload).
  int64_t gradient_bytes() const { return gradient_bytes_; }

 private:
  /// Gradients of `members` side by side, then one presence count per member.
  struct Bucket {
    std::vector<int64_t> members;  // indices into parameters_
    std::vector<int64_t> offsets;  // where each member's gradient starts in flat
    at::ScalarType dtype = at::kFloat;
    at::Device device{at::kCPU};
    int64_t numel = 0;  // gradient elements (the counts follow)
    at::Tensor flat;
    int64_t filled = 0;
    std::unique_ptr<Pending> pending;
  };
  struct Slot {
    int64_t bucket = 0, index = 0;  // index among the bucket's members
    bool filled = false;
  };
  void start_step();
  void fill(int64_t param, const at::Tensor* grad);
  void launch_ready();
  void on_gradient(int64_t param, const at::Tensor& grad);

  std::vector<at::Tensor> parameters_;
  std::shared_ptr<Communicator> comm_;
  DataParallelOptions options_;
  std::vector<Bucket> buckets_;
  std::vector<Slot> slots_;
  std::vector<unsigned> hooks_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  std::mutex mu_;  // backward may run hooks on device threads
  int64_t gradient_bytes_ = 0;
};

}  // namespace sgdx::dist

// Bucketed gradient averaging. Gradients are flattened into per-(device, dtype)
// buckets of at most bucket_bytes, each followed by one presence count per
// parameter, so a parameter no rank touched keeps no gradient without a second
// collective. Buckets start in the same order on every rank (collectives match
// by order), whether launched from backward hooks (overlap) or afterwards.
#include "sgdx/dist/data_parallel.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <map>
#include <string>
#include <utility>

namespace sgdx::dist {
namespace {

/// Half-precision gradients are divided by the world size before the sum (as DDP
/// does): W finite gradients must not overflow to inf in their sum.
bool divides_first(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

DataParallel::DataParallel(std::vector<at::Tensor> parameters, std::shared_ptr<Communicator> comm,
                           DataParallelOptions options)
    : parameters_(std::move(parameters)), comm_(std::move(comm)), options_(options) {
  TORCH_CHECK(comm_ != nullptr,
              "DataParallel: no communicator (use sgdx::dist::single_process() for one process)");
  TORCH_CHECK(options.bucket_bytes > 0, "DataParallel: bucket_bytes must be > 0, got ", options.bucket_bytes);
  // Buckets fill in parameter order within each (device, dtype), the same on every rank.
  std::map<std::pair<std::string, int>, int64_t> open;  // (device, dtype) -> the filling bucket
  slots_.resize(parameters_.size());
  // Backward produces the last parameters' gradients first: buckets fill from the
  // end, so with overlap the first bucket to start is the first one ready.
  for (int64_t i = static_cast<int64_t>(parameters_.size()) - 1; i >= 0; --i) {
    const at::Tensor& p = parameters_[i];
    TORCH_CHECK(p.defined(), "DataParallel: parameter ", i, " is undefined");
    TORCH_CHECK(p.is_floating_point(), "DataParallel: parameter ", i, " has dtype ", p.scalar_type(),
                ", not a floating-point type");
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    gradient_bytes_ += bytes;
    const auto key = std::make_pair(p.device().str(), static_cast<int>(p.scalar_type()));
    auto it = open.find(key);
    const bool full =
        it != open.end() &&
        buckets_[it->second].numel * static_cast<int64_t>(p.element_size()) + bytes > options.bucket_bytes;
    if (it == open.end() || full) {
      Bucket fresh;
      fresh.dtype = p.scalar_type();
      fresh.device = p.device();
      buckets_.push_back(std::move(fresh));
      it = open.insert_or_assign(key, static_cast<int64_t>(buckets_.size()) - 1).first;
    }
    Bucket& b = buckets_[it->second];
    slots_[i] = Slot{it->second, static_cast<int64_t>(b.members.size())};
    b.members.push_back(i);
    b.offsets.push_back(b.numel);
    b.numel += p.numel();
  }
  if (options_.overlap && comm_->world_size() > 1) {
    for (int64_t i = 0; i < static_cast<int64_t>(parameters_.size()); ++i) {
      TORCH_CHECK(parameters_[i].requires_grad(), "DataParallel(overlap): parameter ", i,
                  " does not require grad");
      hooks_.push_back(parameters_[i].register_hook([this, i](const at::Tensor& g) { on_gradient(i, g); }));
    }
  }
}

DataParallel::~DataParallel() {
  for (size_t i = 0; i < hooks_.size(); ++i) parameters_[i].remove_hook(hooks_[i]);
}

void DataParallel::broadcast_from_root(std::vector<at::Tensor> tensors) {
  if (comm_->world_size() == 1 || tensors.empty()) return;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> flat;
  flat.reserve(tensors.size());
  for (auto& t : tensors) flat.push_back(t.detach().contiguous());
  comm_->broadcast(flat, 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!flat[i].is_same(tensors[i])) tensors[i].detach().copy_(flat[i]);
  }
}

void DataParallel::broadcast_parameters() {
  broadcast_from_root(parameters_);
}

void DataParallel::start_step() {
  for (Bucket& b : buckets_) {
    b.flat = at::empty({b.numel + static_cast<int64_t>(b.members.size())},
                       at::TensorOptions().dtype(b.dtype).device(b.device));
    b.filled = 0;
    b.pending.reset();
  }
  for (Slot& s : slots_) s.filled = false;
  next_launch_ = 0;
}

void DataParallel::fill(int64_t param, const at::Tensor* grad) {
  Slot& s = slots_[param];
  Bucket& b = buckets_[s.bucket];
  const at::Tensor& p = parameters_[param];
  at::Tensor slot = b.flat.narrow(0, b.offsets[s.index], p.numel());
  if (grad != nullptr) {
    TORCH_CHECK(!grad->is_sparse(), "DataParallel: parameter ", param,
                " has a sparse gradient (not supported)");
    slot.copy_(grad->reshape({-1}));
    if (divides_first(b.dtype)) slot.div_(comm_->world_size());
  } else {
    slot.zero_();
  }
  b.flat[b.numel + s.index].fill_(grad != nullptr ? 1 : 0);
  s.filled = true;
  ++b.filled;
}

void DataParallel::launch_ready() {
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].filled == static_cast<int64_t>(buckets_[next_launch_].members.size())) {
    Bucket& b = buckets_[next_launch_++];
    b.pending = comm_->all_reduce_sum_async(b.flat);
  }
}

void DataParallel::prepare_backward() {
  TORCH_CHECK(options_.overlap, "DataParallel::prepare_backward: only for overlap = true");
  if (comm_->world_size() == 1) return;
  std::lock_guard<std::mutex> lock(mu_);
  start_step();
  armed_ = true;
}

void DataParallel::on_gradient(int64_t param, const at::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_) return;
  TORCH_CHECK(!slots_[param].filled, "DataParallel(overlap): parameter ", param,
              " got a second gradient in one step; call prepare_backward() before each backward");
  TORCH_CHECK(!parameters_[param].grad().defined(), "DataParallel(overlap): parameter ", param,
              " already holds a gradient; clear it (zero_grad() with set_to_none) before backward, "
              "or accumulate with overlap = false");
  at::NoGradGuard no_grad;
  fill(param, &grad);
  launch_ready();
}

void DataParallel::average_gradients() {
  if (comm_->world_size() == 1) return;
  std::lock_guard<std::mutex> lock(mu_);
  at::NoGradGuard no_grad;
  if (!armed_) start_step();
  armed_ = false;
  // Whatever backward did not fill (no overlap, or a parameter this rank left
  // unused) is filled now, and the buckets start in order.
  for (int64_t i = 0; i < static_cast<int64_t>(parameters_.size()); ++i) {
    if (slots_[i].filled) continue;
    const at::Tensor& g = parameters_[i].grad();
    fill(i, g.defined() ? &g : nullptr);
  }
  launch_ready();
  const double world = comm_->world_size();
  for (Bucket& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
    const at::Tensor counts = b.flat.narrow(0, b.numel, static_cast<int64_t>(b.members.size()))
                                  .to(at::kCPU, at::kDouble)
                                  .contiguous();
    const double* count = counts.data_ptr<double>();
    for (size_t j = 0; j < b.members.size(); ++j) {
      at::Tensor& p = parameters_[b.members[j]];
      if (count[j] == 0.0) continue;  // no rank touched it
      at::Tensor avg = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (!divides_first(b.dtype)) avg = avg.div(world);
      if (p.grad().defined()) {
        p.mutable_grad().copy_(avg);
      } else {
        p.mutable_grad() = avg;
      }
    }
    b.flat = at::Tensor();
  }
}

}  // namespace sgdx::dist

#pragma once
// Shared by the CUDA tests: the skip without a device, and the allocator poisoning
// that makes stale (unwritten) kernel outputs show.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "sgdx/config.h"
#if SGDX_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

// A macro: GTEST_SKIP() only returns from the function it is written in.
#define SGDX_REQUIRE_CUDA()                                             \
  do {                                                                  \
    if (!SGDX_WITH_CUDA) GTEST_SKIP() << "sgdx built without CUDA";     \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

namespace sgdx::testing {
/// Fills 64 MiB of the CUDA caching allocator with NaN and frees it: the next
/// allocations (a kernel's outputs and workspaces) start as NaN.
inline void poison_cuda_cache() {
  auto p = torch::full({16 << 20}, NAN, torch::TensorOptions().device(torch::kCUDA));
  torch::cuda::synchronize();
}

/// A copy of t whose data starts at an odd element offset of its storage (so a
/// float32 tensor is 4- but not 8-byte aligned, a half one 2- but not 4-byte):
/// kernels must take it through their scalar path.
inline torch::Tensor at_odd_offset(const torch::Tensor& t) {
  auto buf = torch::empty({t.numel() + 1}, t.options());
  auto v = buf.narrow(0, 1, t.numel()).view(t.sizes());
  v.copy_(t);
  return v;
}

#if SGDX_WITH_CUDA
/// Sets CUDA's sync-debug mode for a scope and restores the previous one. With
/// L_ERROR every synchronizing CUDA call (a blocking copy, .item(), a stream or
/// device synchronize) throws c10::Error; with L_WARN it warns.
class SyncDebugScope {
 public:
  explicit SyncDebugScope(c10::cuda::SyncDebugMode mode)
      : prev_(c10::cuda::warning_state().get_sync_debug_mode()) {
    c10::cuda::warning_state().set_sync_debug_mode(mode);
  }
  ~SyncDebugScope() { c10::cuda::warning_state().set_sync_debug_mode(prev_); }
  SyncDebugScope(const SyncDebugScope&) = delete;
  SyncDebugScope& operator=(const SyncDebugScope&) = delete;

 private:
  c10::cuda::SyncDebugMode prev_;
};

/// Counts the synchronizing CUDA calls of a scope: sync-debug mode L_WARN and a
/// warning handler that counts its warnings (other warnings go to the previous handler).
class SyncCounter : public c10::WarningHandler {
 public:
  SyncCounter() : prev_(c10::WarningUtils::get_warning_handler()), mode_(c10::cuda::SyncDebugMode::L_WARN) {
    c10::WarningUtils::set_warning_handler(this);
  }
  ~SyncCounter() override { c10::WarningUtils::set_warning_handler(prev_); }
  SyncCounter(const SyncCounter&) = delete;
  SyncCounter& operator=(const SyncCounter&) = delete;
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchroniz") != std::string::npos) {
      ++syncs;
    } else if (prev_ != nullptr) {
      prev_->process(w);
    }
  }
  int syncs = 0;

 private:
  c10::WarningHandler* prev_;
  SyncDebugScope mode_;
};
#endif
}  // namespace sgdx::testing

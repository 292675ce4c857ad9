#pragma once
// A compact multi-tensor launcher in the style of ATen's MultiTensorApply.cuh:
// tensors are cut into fixed-size chunks, each CUDA block handles one chunk,
// and the per-launch metadata travels in the kernel's parameter space.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <vector>

namespace sgdx::cuda {

constexpr int kBlockSize = 256;
constexpr int64_t kChunkSize = 32768;  // elements per block; a multiple of 16
constexpr int kMaxTensors = 40;
constexpr int kMaxBlocks = 320;

/// Per-launch metadata: N pointer lists plus per-tensor scalars of type Extra.
/// (Kernel parameters are limited to 4 KiB: many lists need smaller MaxTensors/MaxBlocks.)
template <int N, typename Extra, int MaxTensors = kMaxTensors, int MaxBlocks = kMaxBlocks>
struct TensorListMeta {
  static constexpr int kTensors = MaxTensors;
  static constexpr int kBlocks = MaxBlocks;
  void* addresses[N][MaxTensors];
  int64_t numel[MaxTensors];
  Extra extra[MaxTensors];
  unsigned char block_to_tensor[MaxBlocks];
  int block_to_chunk[MaxBlocks];
};

/// Launches `kernel<<<blocks, kBlockSize, 0, stream>>>(meta, args...)` as many
/// times as needed to cover all tensors. lists[i][k] is tensor k of list i.
template <int N, typename Extra, int MaxTensors = kMaxTensors, int MaxBlocks = kMaxBlocks, typename Kernel,
          typename... Args>
void multi_tensor_apply(const std::vector<std::vector<void*>>& lists, const std::vector<int64_t>& numels,
                        const std::vector<Extra>& extras, Kernel kernel, Args... args) {
  static_assert(sizeof(TensorListMeta<N, Extra, MaxTensors, MaxBlocks>) <= 4000,
                "kernel parameter space: lower MaxTensors / MaxBlocks");
  constexpr int kMaxTensors = MaxTensors;  // the limits of this instantiation
  constexpr int kMaxBlocks = MaxBlocks;
  TensorListMeta<N, Extra, MaxTensors, MaxBlocks> meta{};
  auto stream = at::cuda::getCurrentCUDAStream();
  int tensors = 0, blocks = 0;
  auto launch = [&] {
    if (blocks == 0) return;
    kernel<<<blocks, kBlockSize, 0, stream>>>(meta, args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  for (size_t k = 0; k < numels.size(); ++k) {
    if (numels[k] == 0) continue;
    for (int i = 0; i < N; ++i) meta.addresses[i][tensors] = lists[i][k];
    meta.numel[tensors] = numels[k];
    meta.extra[tensors] = extras[k];
    const int64_t chunks = (numels[k] + kChunkSize - 1) / kChunkSize;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_to_tensor[blocks] = static_cast<unsigned char>(tensors);
      meta.block_to_chunk[blocks] = static_cast<int>(c);
      ++blocks;
      const bool last_chunk = c == chunks - 1;
      if (blocks == kMaxBlocks || (last_chunk && tensors + 1 == kMaxTensors)) {
        launch();
        blocks = 0;
        if (last_chunk) {
          tensors = -1;  // incremented below to 0
        } else {
          // The current tensor continues in the next launch at slot 0.
          for (int i = 0; i < N; ++i) meta.addresses[i][0] = meta.addresses[i][tensors];
          meta.numel[0] = meta.numel[tensors];
          meta.extra[0] = meta.extra[tensors];
          tensors = 0;
        }
      }
    }
    ++tensors;
  }
  launch();
}

}  // namespace sgdx::cuda

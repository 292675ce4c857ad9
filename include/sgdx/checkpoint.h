#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <functional>
#include <string>

#include "sgdx/export.h"

namespace sgdx {

using ExtraSaver = std::function<void(torch::serialize::OutputArchive&)>;
using ExtraLoader = std::function<void(torch::serialize::InputArchive&)>;

/// Writes the model's parameters and buffers (keyed by position), the
/// optimizer's state (if given) and anything `extra` writes (a sampler, a
/// step counter) to `path`. The file is written to a temporary name, synced
/// and renamed over `path` (then the directory is synced), so a crash or a
/// kill at any moment leaves the previous checkpoint or the new one.
SGDX_API void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                              const torch::optim::Optimizer* optimizer = nullptr,
                              const ExtraSaver& extra = nullptr);

/// Restores what save_checkpoint wrote. The model's parameters and buffers
/// are checked (count, shape, dtype) before any is changed; a mismatch
/// throws c10::Error naming the tensor and both values. A load that fails
/// later (the optimizer's or the extra part) restores the model and the
/// optimizer as they were before it throws; `extra` runs last and must
/// itself change nothing when it throws.
SGDX_API void load_checkpoint(const std::string& path, torch::nn::Module& model,
                              torch::optim::Optimizer* optimizer = nullptr,
                              const ExtraLoader& extra = nullptr);

}  // namespace sgdx

#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <functional>
#include <string>

namespace sgdx {

using ExtraSaver = std::function<void(torch::serialize::OutputArchive&)>;
using ExtraLoader = std::function<void(torch::serialize::InputArchive&)>;

/// Writes the model's parameters and buffers (keyed by position), the
/// optimizer's state (if given) and anything `extra` writes (a sampler, a
/// step counter) to `path`. The file is written to a temporary name and
/// renamed over `path`, so a crash never leaves a half-written checkpoint.
void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer = nullptr,
                     const ExtraSaver& extra = nullptr);

/// Restores what save_checkpoint wrote. The model's parameters and buffers
/// are checked (count, shape, dtype) before any is changed; a mismatch
/// throws c10::Error naming the tensor and both values.
void load_checkpoint(const std::string& path, torch::nn::Module& model,
                     torch::optim::Optimizer* optimizer = nullptr,
                     const ExtraLoader& extra = nullptr);

}  // namespace sgdx

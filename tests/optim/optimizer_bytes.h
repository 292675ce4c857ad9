#pragma once
// An optimizer's whole serialized state as bytes: equal bytes, equal state.
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <sstream>
#include <string>

namespace sgdx::testing {
inline std::string optimizer_bytes(const torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}
}  // namespace sgdx::testing

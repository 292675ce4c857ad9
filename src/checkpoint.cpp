#include "sgdx/checkpoint.h"

#include <c10/util/irange.h>
#include <fcntl.h>
#include <torch/serialize.h>
#include <torch/utils.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace sgdx {
namespace {

constexpr int64_t kFormat = 1;

void sync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, "cannot open '", path, "' to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  TORCH_CHECK(rc == 0, "cannot sync '", path, "': ", std::strerror(err));
}

std::vector<torch::Tensor> tensors_of(const torch::nn::Module& model, bool buffers) {
  return buffers ? model.buffers(/*recurse=*/true) : model.parameters(/*recurse=*/true);
}

void write_tensors(torch::serialize::OutputArchive& archive, const std::string& kind,
                   const std::vector<torch::Tensor>& tensors) {
  archive.write(kind + "/count", c10::IValue(static_cast<int64_t>(tensors.size())));
  for (const auto i : c10::irange(tensors.size())) {
    archive.write(kind + "/" + std::to_string(i), tensors[i].detach(), /*is_buffer=*/true);
  }
}

std::vector<torch::Tensor> read_tensors(torch::serialize::InputArchive& archive, const std::string& kind,
                                        const std::vector<torch::Tensor>& current, const std::string& path) {
  c10::IValue count;
  archive.read(kind + "/count", count);
  TORCH_CHECK(count.toInt() == static_cast<int64_t>(current.size()), "checkpoint '", path, "' holds ",
              count.toInt(), " ", kind, " but the model has ", current.size());
  std::vector<torch::Tensor> saved(current.size());
  for (const auto i : c10::irange(current.size())) {
    archive.read(kind + "/" + std::to_string(i), saved[i], /*is_buffer=*/true);
    TORCH_CHECK(saved[i].sizes() == current[i].sizes(), "checkpoint '", path, "': ", kind, " ", i,
                " has shape ", saved[i].sizes(), " but the model's has ", current[i].sizes());
    TORCH_CHECK(saved[i].scalar_type() == current[i].scalar_type(), "checkpoint '", path, "': ", kind, " ", i,
                " has dtype ", saved[i].scalar_type(), " but the model's has ", current[i].scalar_type());
  }
  return saved;
}

}  // namespace

void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const ExtraSaver& extra) {
  torch::serialize::OutputArchive archive;
  archive.write("sgdx/format", c10::IValue(kFormat));
  write_tensors(archive, "parameters", tensors_of(model, false));
  write_tensors(archive, "buffers", tensors_of(model, true));
  archive.write("has_optimizer", c10::IValue(optimizer != nullptr));
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive opt_archive(archive.compilation_unit());
    optimizer->save(opt_archive);
    archive.write("optimizer", opt_archive);
  }
  archive.write("has_extra", c10::IValue(static_cast<bool>(extra)));
  if (extra) {
    torch::serialize::OutputArchive extra_archive(archive.compilation_unit());
    extra(extra_archive);
    archive.write("extra", extra_archive);
  }
  const std::filesystem::path target(path);
  const std::filesystem::path tmp = target.string() + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  try {
    archive.save_to(tmp.string());
    // On disk before the rename: after a crash or power loss the name holds the
    // old file or the new one, never a file whose data was not written yet.
    sync_path(tmp.string(), O_RDONLY);
    std::filesystem::rename(tmp, target);
    sync_path(target.has_parent_path() ? target.parent_path().string() : ".", O_RDONLY | O_DIRECTORY);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     const ExtraLoader& extra) {
  TORCH_CHECK(std::filesystem::exists(path), "checkpoint '", path, "' does not exist");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "checkpoint '", path,
                "' is not a readable sgdx checkpoint: ", e.what_without_backtrace());
  }
  c10::IValue v;
  TORCH_CHECK(archive.try_read("sgdx/format", v), "checkpoint '", path,
              "' was not written by sgdx::save_checkpoint");
  TORCH_CHECK(v.toInt() == kFormat, "checkpoint '", path, "' has format ", v.toInt(),
              ", this sgdx reads format ", kFormat);
  auto params = tensors_of(model, false);
  auto buffers = tensors_of(model, true);
  const auto saved_params = read_tensors(archive, "parameters", params, path);
  const auto saved_buffers = read_tensors(archive, "buffers", buffers, path);
  archive.read("has_optimizer", v);
  const bool has_optimizer = v.toBool();
  TORCH_CHECK(optimizer == nullptr || has_optimizer, "checkpoint '", path, "' holds no optimizer state");
  // What is replaced is kept, so that a load that fails part-way (an optimizer state
  // of another kind, a broken extra part) restores the model and optimizer as they were.
  std::vector<torch::Tensor> old_params, old_buffers;
  for (const auto& p : params) old_params.push_back(p.detach().clone());
  for (const auto& b : buffers) old_buffers.push_back(b.detach().clone());
  std::ostringstream old_optimizer;
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive a;
    optimizer->save(a);
    a.save_to(old_optimizer);
  }
  auto assign = [&](const std::vector<torch::Tensor>& p, const std::vector<torch::Tensor>& b) {
    torch::NoGradGuard no_grad;
    for (const auto i : c10::irange(params.size())) params[i].copy_(p[i]);
    for (const auto i : c10::irange(buffers.size())) buffers[i].copy_(b[i]);
  };
  try {
    assign(saved_params, saved_buffers);
    if (optimizer != nullptr) {
      torch::serialize::InputArchive opt_archive;
      archive.read("optimizer", opt_archive);
      optimizer->load(opt_archive);
    }
    if (extra) {
      archive.read("has_extra", v);
      TORCH_CHECK(v.toBool(), "checkpoint '", path, "' holds no extra state");
      torch::serialize::InputArchive extra_archive;
      archive.read("extra", extra_archive);
      extra(extra_archive);
    }
  } catch (...) {
    assign(old_params, old_buffers);
    if (optimizer != nullptr) {
      std::istringstream in(old_optimizer.str());
      torch::serialize::InputArchive a;
      a.load_from(in);
      optimizer->load(a);
    }
    throw;
  }
}

}  // namespace sgdx

#include "sgdx/data/cifar10.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>

#include <filesystem>
#include <vector>

namespace sgdx::data {

Cifar10Batch read_cifar10_batch(const std::string& path) {
  const auto bytes = read_file_maybe_gz(path);
  TORCH_CHECK(!bytes.empty() && bytes.size() % kCifar10RecordBytes == 0, "CIFAR-10 file '", path,
              "' has ", bytes.size(), " bytes, not a positive multiple of the ",
              kCifar10RecordBytes, "-byte record (truncated or not a CIFAR-10 batch)");
  const int64_t n = static_cast<int64_t>(bytes.size()) / kCifar10RecordBytes;
  auto records = at::from_blob(const_cast<uint8_t*>(bytes.data()), {n, kCifar10RecordBytes},
                               at::kByte)
                     .clone();
  auto labels = records.select(1, 0).to(at::kLong);
  const auto max_label = labels.max().item<int64_t>();
  TORCH_CHECK(max_label <= 9, "CIFAR-10 file '", path, "' has a label ", max_label,
              " outside 0..9 (corrupt or not a CIFAR-10 batch)");
  auto images = records.narrow(1, 1, kCifar10RecordBytes - 1).reshape({n, 3, 32, 32}).contiguous();
  return {images, labels};
}

ImageSet load_cifar10(const std::string& dir, bool train) {
  std::filesystem::path root(dir);
  if (!std::filesystem::exists(root / "test_batch.bin") &&
      !std::filesystem::exists(root / "test_batch.bin.gz") &&
      std::filesystem::exists(root / "cifar-10-batches-bin")) {
    root /= "cifar-10-batches-bin";
  }
  std::vector<std::string> names;
  if (train) {
    for (int i = 1; i <= 5; ++i) names.push_back("data_batch_" + std::to_string(i) + ".bin");
  } else {
    names.push_back("test_batch.bin");
  }
  std::vector<at::Tensor> images, labels;
  for (const auto& name : names) {
    auto p = root / name;
    if (!std::filesystem::exists(p)) p = root / (name + ".gz");
    TORCH_CHECK(std::filesystem::exists(p), "CIFAR-10 file '", (root / name).string(),
                "[.gz]' not found");
    auto b = read_cifar10_batch(p.string());
    images.push_back(b.images);
    labels.push_back(b.labels);
  }
  return {at::cat(images).to(at::kFloat).div_(255.0), at::cat(labels)};
}

}  // namespace sgdx::data

#include "sgdx/data/cifar10.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>

#include <filesystem>
#include <system_error>
#include <vector>

namespace sgdx::data {

Cifar10Batch parse_cifar10_batch(const std::vector<uint8_t>& bytes, const std::string& name) {
  TORCH_CHECK(!bytes.empty() && bytes.size() % kCifar10RecordBytes == 0, "CIFAR-10 file '", name, "' has ",
              bytes.size(), " bytes, not a positive multiple of the ", kCifar10RecordBytes,
              "-byte record (truncated or not a CIFAR-10 batch)");
  const int64_t n = static_cast<int64_t>(bytes.size()) / kCifar10RecordBytes;
  for (int64_t i = 0; i < n; ++i) {
    const int label = bytes[i * kCifar10RecordBytes];
    TORCH_CHECK(label <= 9, "CIFAR-10 file '", name, "' record ", i, " has label ", label,
                " outside 0..9 (corrupt or not a CIFAR-10 batch)");
  }
  auto records =
      at::from_blob(const_cast<uint8_t*>(bytes.data()), {n, kCifar10RecordBytes}, at::kByte).clone();
  auto labels = records.select(1, 0).to(at::kLong);
  auto images = records.narrow(1, 1, kCifar10RecordBytes - 1).reshape({n, 3, 32, 32}).contiguous();
  return {images, labels};
}

Cifar10Batch read_cifar10_batch(const std::string& path) {
  return parse_cifar10_batch(read_file_maybe_gz(path, "CIFAR-10 file"), path);
}

ImageSet load_cifar10(const std::string& dir, bool train) {
  std::error_code ec;
  TORCH_CHECK(std::filesystem::is_directory(dir, ec), "CIFAR-10 data directory '", dir, "' ",
              std::filesystem::exists(dir, ec) ? "is not a directory" : "not found");
  std::filesystem::path root(dir);
  if (!std::filesystem::exists(root / "test_batch.bin", ec) &&
      !std::filesystem::exists(root / "test_batch.bin.gz", ec) &&
      std::filesystem::exists(root / "cifar-10-batches-bin", ec)) {
    root /= "cifar-10-batches-bin";
  }
  std::vector<std::string> names;
  if (train) {
    for (int i = 1; i <= 5; ++i) names.push_back("data_batch_" + std::to_string(i) + ".bin");
  } else {
    names.emplace_back("test_batch.bin");
  }
  std::vector<at::Tensor> images, labels;
  int64_t count = 0;
  for (const auto& name : names) {
    auto p = root / name;
    if (!std::filesystem::exists(p, ec)) p = root / (name + ".gz");
    TORCH_CHECK(std::filesystem::exists(p, ec), "CIFAR-10 file '", (root / name).string(),
                "[.gz]' not found");
    auto b = read_cifar10_batch(p.string());
    count += b.labels.size(0);
    dense_bytes({count, 3, 32, 32}, 4, "CIFAR-10 split in '" + root.string() + "' as float32");
    images.push_back(b.images);
    labels.push_back(b.labels);
  }
  return {at::cat(images).to(at::kFloat).div_(255.0), at::cat(labels)};
}

}  // namespace sgdx::data

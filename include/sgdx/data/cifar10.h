#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sgdx/data/idx.h"
#include "sgdx/export.h"

namespace sgdx::data {

/// Bytes per CIFAR-10 binary record: 1 label byte + 3x32x32 pixel bytes.
constexpr int64_t kCifar10RecordBytes = 1 + 3 * 32 * 32;

/// Reads one CIFAR-10 binary batch (data_batch_N.bin / test_batch.bin, raw or
/// gzipped). Images are uint8 [N, 3, 32, 32], labels int64 [N]. The size must
/// be a whole number of records and every label in 0..9.
struct Cifar10Batch {
  at::Tensor images;
  at::Tensor labels;
};
SGDX_API Cifar10Batch read_cifar10_batch(const std::string& path);

/// Parses the bytes of a batch already in memory (after gunzip); `name` is used in error messages.
SGDX_API Cifar10Batch parse_cifar10_batch(const std::vector<uint8_t>& bytes, const std::string& name);

/// Loads the training (data_batch_1..5.bin) or test (test_batch.bin) split from
/// `dir` (or its cifar-10-batches-bin subfolder) as float32 images in [0, 1].
SGDX_API ImageSet load_cifar10(const std::string& dir, bool train);

}  // namespace sgdx::data

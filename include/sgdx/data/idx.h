#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sgdx::data {

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
/// Throws c10::Error naming the file when it is missing, unreadable,
/// or a truncated/corrupt gzip stream.
std::vector<uint8_t> read_file_maybe_gz(const std::string& path);

/// Reads an IDX file (the MNIST format; gzipped or raw) into a CPU tensor of
/// its element type (uint8, int8, int16, int32, float32, float64) and shape.
/// The magic, the dimensions and the byte count are checked against the file.
at::Tensor read_idx(const std::string& path);

/// Parses IDX bytes already in memory; `name` is used in error messages.
at::Tensor parse_idx(const std::vector<uint8_t>& bytes, const std::string& name);

struct ImageSet {
  at::Tensor images;  ///< float32 [N, C, H, W] in [0, 1]
  at::Tensor labels;  ///< int64 [N]
};

/// Loads an MNIST-family split from `dir`: {train,t10k}-{images-idx3,labels-idx1}-ubyte,
/// with or without .gz. Checks that image and label counts agree and labels are 0..9.
ImageSet load_mnist_family(const std::string& dir, bool train);

}  // namespace sgdx::data

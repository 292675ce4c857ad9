#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::data {

/// The most bytes a reader allocates for one data set: the machine's physical
/// memory, or SGDX_MAX_DATA_BYTES when that is set to a positive integer.
SGDX_API int64_t max_dataset_bytes();

/// Bytes of dense storage for `dims` with `elem_size`-byte elements. Throws a
/// c10::Error naming `name`, the dims and the size when the size overflows int64
/// or exceeds max_dataset_bytes(): readers call it before they allocate.
SGDX_API int64_t dense_bytes(const std::vector<int64_t>& dims, int64_t elem_size, const std::string& name);

/// Gunzips `bytes` (one or more gzip members) when they start with the gzip
/// magic, else returns them unchanged; `name` is used in error messages. Throws a
/// c10::Error on a truncated or corrupt stream or one that inflates past
/// max_dataset_bytes().
SGDX_API std::vector<uint8_t> gunzip_if_gzip(std::vector<uint8_t> bytes, const std::string& name);

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
/// Throws c10::Error naming the file (as "<kind> '<path>'") when it is missing,
/// a directory, unreadable, larger than max_dataset_bytes(), or a truncated/corrupt gzip stream.
SGDX_API std::vector<uint8_t> read_file_maybe_gz(const std::string& path, const std::string& kind = "file");

/// Reads an IDX file (the MNIST format; gzipped or raw) into a CPU tensor of
/// its element type (uint8, int8, int16, int32, float32, float64) and shape.
/// The magic, the dimensions and the byte count are checked against the file.
SGDX_API at::Tensor read_idx(const std::string& path);

/// Parses IDX bytes already in memory; `name` is used in error messages.
SGDX_API at::Tensor parse_idx(const std::vector<uint8_t>& bytes, const std::string& name);

struct ImageSet {
  at::Tensor images;  ///< float32 [N, C, H, W] in [0, 1]
  at::Tensor labels;  ///< int64 [N]
};

/// Loads an MNIST-family split from `dir`: {train,t10k}-{images-idx3,labels-idx1}-ubyte,
/// with or without .gz. Checks that there is at least one image of at least one
/// pixel, that image and label counts agree and that labels are 0..9.
SGDX_API ImageSet load_mnist_family(const std::string& dir, bool train);

}  // namespace sgdx::data

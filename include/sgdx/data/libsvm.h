#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <string_view>

#include "sgdx/export.h"

namespace sgdx::data {

/// A LIBSVM-format data set ("label idx:val idx:val ...", 1-based indices).
struct LibsvmData {
  at::Tensor features;  ///< float64 [n, d], dense (a9a: 32,561 x 123 = 32 MB)
  at::Tensor labels;    ///< float64 [n], +1 / -1 (0/1 labels are mapped 0 -> -1)
};

/// Reads a LIBSVM file (raw or gzipped). `num_features` <= 0: the largest index seen
/// (a9a.t needs 123 given explicitly: feature 123 never occurs in it). Malformed
/// lines, non-finite values, index overflow, a file with no examples or no features,
/// and a dense matrix larger than max_dataset_bytes() (sgdx/data/idx.h) give a
/// c10::Error naming the file, the line number and the problem.
SGDX_API LibsvmData read_libsvm(const std::string& path, int64_t num_features = 0);

/// Parses LIBSVM text already in memory; `name` is used in error messages.
SGDX_API LibsvmData parse_libsvm(std::string_view text, const std::string& name, int64_t num_features = 0);

/// Scales every row to unit Euclidean norm (zero rows stay zero), in place.
SGDX_API void normalize_rows_(at::Tensor& features);

}  // namespace sgdx::data

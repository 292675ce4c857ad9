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

/// A LIBSVM data set in compressed sparse rows: memory O(nnz), whatever the number of
/// features (a file with 10^6 features is as cheap as its non-zeros).
struct SGDX_API LibsvmCsr {
  at::Tensor indptr;   ///< int64 [n + 1]: row i's entries are [indptr[i], indptr[i + 1])
  at::Tensor indices;  ///< int64 [nnz], 0-based feature indices, increasing within a row
  at::Tensor values;   ///< float64 [nnz]
  at::Tensor labels;   ///< float64 [n], +1 / -1
  int64_t num_features = 0;
  std::string name;  ///< the file (for errors)

  int64_t rows() const { return labels.numel(); }
  int64_t nnz() const { return values.numel(); }
  /// The dense float64 [n, num_features] matrix; refused (naming the file) when it
  /// would exceed max_dataset_bytes() (sgdx/data/idx.h).
  at::Tensor to_dense() const;
};

/// Reads a LIBSVM file (raw or gzipped) into CSR, with the checks of read_libsvm.
SGDX_API LibsvmCsr read_libsvm_csr(const std::string& path, int64_t num_features = 0);
/// Parses LIBSVM text already in memory into CSR; `name` is used in error messages.
SGDX_API LibsvmCsr parse_libsvm_csr(std::string_view text, const std::string& name, int64_t num_features = 0);

/// Reads a LIBSVM file (raw or gzipped). `num_features` <= 0: the largest index seen
/// (a9a.t needs 123 given explicitly: feature 123 never occurs in it). Malformed
/// lines, non-finite values, index overflow, a file with no examples or no features,
/// and a dense matrix larger than max_dataset_bytes() (sgdx/data/idx.h) give a
/// c10::Error naming the file, the line number and the problem.
SGDX_API LibsvmData read_libsvm(const std::string& path, int64_t num_features = 0);

/// Parses LIBSVM text already in memory; `name` is used in error messages
/// (parse_libsvm_csr, then to_dense).
SGDX_API LibsvmData parse_libsvm(std::string_view text, const std::string& name, int64_t num_features = 0);

/// Scales every row to unit Euclidean norm (zero rows stay zero), in place.
SGDX_API void normalize_rows_(at::Tensor& features);

}  // namespace sgdx::data

#include "sgdx/data/libsvm.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace sgdx::data {

LibsvmData read_libsvm(const std::string& path, int64_t num_features) {
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "cannot open LIBSVM file '", path, "'");
  std::vector<double> labels;
  std::vector<int64_t> rows, cols;
  std::vector<double> vals;
  std::string line;
  int64_t line_no = 0, max_index = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const char* p = line.c_str();
    while (*p == ' ' || *p == '\t') ++p;
    if (*p == '\0' || *p == '#') continue;
    char* end = nullptr;
    errno = 0;
    const double label = std::strtod(p, &end);
    TORCH_CHECK(end != p && errno == 0, "'", path, "' line ", line_no, ": expected a label, got '",
                line.substr(0, 20), "'");
    TORCH_CHECK(label == 1 || label == -1 || label == 0, "'", path, "' line ", line_no,
                ": label must be +1, -1 or 0/1, got ", label);
    const int64_t row = static_cast<int64_t>(labels.size());
    labels.push_back(label == 0 ? -1.0 : label);
    p = end;
    int64_t prev = 0;
    while (true) {
      while (*p == ' ' || *p == '\t') ++p;
      if (*p == '\0' || *p == '#') break;
      errno = 0;
      const long long idx = std::strtoll(p, &end, 10);
      TORCH_CHECK(end != p && *end == ':', "'", path, "' line ", line_no, ": expected 'index:value', got '",
                  std::string(p).substr(0, 20), "'");
      TORCH_CHECK(idx >= 1, "'", path, "' line ", line_no, ": feature index must be >= 1, got ", idx);
      TORCH_CHECK(idx > prev, "'", path, "' line ", line_no, ": feature indices must increase, got ", prev,
                  " then ", idx);
      p = end + 1;
      const double v = std::strtod(p, &end);
      TORCH_CHECK(end != p && errno == 0, "'", path, "' line ", line_no, ": bad value for feature ", idx);
      p = end;
      rows.push_back(row);
      cols.push_back(idx - 1);
      vals.push_back(v);
      prev = idx;
      max_index = std::max<int64_t>(max_index, idx);
    }
  }
  TORCH_CHECK(!labels.empty(), "LIBSVM file '", path, "' holds no examples");
  if (num_features <= 0) num_features = max_index;
  TORCH_CHECK(max_index <= num_features, "'", path, "': feature index ", max_index, " exceeds num_features ",
              num_features);
  const auto n = static_cast<int64_t>(labels.size());
  auto x = at::zeros({n, num_features}, at::kDouble);
  auto* xp = x.data_ptr<double>();
  for (size_t k = 0; k < vals.size(); ++k) xp[rows[k] * num_features + cols[k]] = vals[k];
  return {x, at::tensor(labels, at::kDouble)};
}

void normalize_rows_(at::Tensor& features) {
  auto norms = at::linalg_vector_norm(features, 2, {1}, /*keepdim=*/true);
  features.div_(at::where(norms > 0, norms, at::ones_like(norms)));
}

}  // namespace sgdx::data

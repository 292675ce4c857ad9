#include "sgdx/data/libsvm.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "sgdx/data/idx.h"

namespace sgdx::data {
namespace {

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}
// What may follow a label or a value: the end of the line, a blank or a comment.
bool ends_field(char c) {
  return c == '\0' || is_blank(c) || c == '#';
}
std::string snippet(const char* p) {
  return std::string(p).substr(0, 20);
}

}  // namespace

LibsvmCsr parse_libsvm_csr(std::string_view text, const std::string& name, int64_t num_features) {
  std::vector<double> labels;
  std::vector<int64_t> indptr = {0}, cols;
  std::vector<double> vals;
  std::string line;
  int64_t line_no = 0, max_index = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t eol = text.find('\n', pos);
    line.assign(text.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos));
    pos = eol == std::string_view::npos ? text.size() : eol + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    TORCH_CHECK(line.find('\0') == std::string::npos, "'", name, "' line ", line_no,
                ": contains a NUL byte (not a LIBSVM text file?)");
    const char* p = line.c_str();
    while (is_blank(*p)) ++p;
    if (*p == '\0' || *p == '#') continue;
    char* end = nullptr;
    const double label = std::strtod(p, &end);
    TORCH_CHECK(end != p && ends_field(*end), "'", name, "' line ", line_no, ": expected a label, got '",
                snippet(p), "'");
    TORCH_CHECK(label == 1 || label == -1 || label == 0, "'", name, "' line ", line_no,
                ": label must be +1, -1 or 0/1, got ", label);
    labels.push_back(label == 0 ? -1.0 : label);
    p = end;
    int64_t prev = 0;
    while (true) {
      while (is_blank(*p)) ++p;
      if (*p == '\0' || *p == '#') break;
      errno = 0;
      const long long idx = std::strtoll(p, &end, 10);
      TORCH_CHECK(end != p && *end == ':', "'", name, "' line ", line_no, ": expected 'index:value', got '",
                  snippet(p), "'");
      TORCH_CHECK(errno != ERANGE, "'", name, "' line ", line_no, ": feature index ",
                  std::string(p, static_cast<size_t>(end - p)), " overflows int64");
      TORCH_CHECK(idx >= 1, "'", name, "' line ", line_no, ": feature index must be >= 1, got ", idx);
      TORCH_CHECK(idx > prev, "'", name, "' line ", line_no, ": feature indices must increase, got ", prev,
                  " then ", idx);
      p = end + 1;
      // strtod would skip blanks: "3: 1" is malformed, not feature 3 = 1.
      TORCH_CHECK(!ends_field(*p), "'", name, "' line ", line_no, ": missing value for feature ", idx);
      const double v = std::strtod(p, &end);
      TORCH_CHECK(end != p && ends_field(*end), "'", name, "' line ", line_no, ": bad value '", snippet(p),
                  "' for feature ", idx);
      TORCH_CHECK(std::isfinite(v), "'", name, "' line ", line_no, ": non-finite value ",
                  std::string(p, static_cast<size_t>(end - p)), " for feature ", idx);
      p = end;
      cols.push_back(idx - 1);
      vals.push_back(v);
      prev = idx;
      max_index = std::max<int64_t>(max_index, idx);
    }
    indptr.push_back(static_cast<int64_t>(cols.size()));
  }
  TORCH_CHECK(!labels.empty(), "LIBSVM file '", name, "' holds no examples");
  if (num_features <= 0) num_features = max_index;
  TORCH_CHECK(num_features > 0, "LIBSVM file '", name, "' has no features (", labels.size(),
              " examples, none with an index:value pair)");
  TORCH_CHECK(max_index <= num_features, "'", name, "': feature index ", max_index, " exceeds num_features ",
              num_features);
  LibsvmCsr out;
  out.indptr = at::tensor(indptr, at::kLong);
  out.indices = at::tensor(cols, at::kLong);
  out.values = at::tensor(vals, at::kDouble);
  out.labels = at::tensor(labels, at::kDouble);
  out.num_features = num_features;
  out.name = name;
  return out;
}

at::Tensor LibsvmCsr::to_dense() const {
  const auto n = rows();
  dense_bytes({n, num_features}, sizeof(double), "LIBSVM file '" + name + "' as a dense float64 matrix");
  auto x = at::zeros({n, num_features}, at::kDouble);
  auto* xp = x.data_ptr<double>();
  const auto* ip = indptr.data_ptr<int64_t>();
  const auto* cp = indices.data_ptr<int64_t>();
  const auto* vp = values.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = ip[i]; k < ip[i + 1]; ++k) xp[i * num_features + cp[k]] = vp[k];
  return x;
}

LibsvmData parse_libsvm(std::string_view text, const std::string& name, int64_t num_features) {
  const auto csr = parse_libsvm_csr(text, name, num_features);
  return {csr.to_dense(), csr.labels};
}

LibsvmCsr read_libsvm_csr(const std::string& path, int64_t num_features) {
  const auto bytes = read_file_maybe_gz(path, "LIBSVM file");
  return parse_libsvm_csr(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path,
                          num_features);
}

LibsvmData read_libsvm(const std::string& path, int64_t num_features) {
  const auto bytes = read_file_maybe_gz(path, "LIBSVM file");
  return parse_libsvm(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path,
                      num_features);
}

void normalize_rows_(at::Tensor& features) {
  auto norms = at::linalg_vector_norm(features, 2, {1}, /*keepdim=*/true);
  features.div_(at::where(norms > 0, norms, at::ones_like(norms)));
}

}  // namespace sgdx::data

#pragma once
// sgdx-erm's cache of the reference optimum: one file per (data content, loss, l1, l2),
// holding the minimiser in shortest round-trip decimals. A cached minimiser is
// re-certified (objective and duality gap recomputed on the data) before it is used, so a
// stale, foreign or corrupt file costs one pass over the data and a warning, never a wrong P*.
#include <fmt/core.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../common/atomic_file.h"
#include "../common/fnv1a.h"
#include "sgdx/optim/reference_optimum.h"

namespace sgdx_erm {

constexpr const char* kCacheMagic = "sgdx-erm reference optimum v1";

using sgdx_examples::fnv1a;

// Shortest round-trip decimal: exact, and readable.
inline std::string exact(double v) {
  return fmt::format("{}", v);
}

/// The default directory: $XDG_CACHE_HOME/sgdx, else $HOME/.cache/sgdx, else "".
inline std::string default_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0')
    return std::string(x) + "/sgdx";
  if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') return std::string(h) + "/.cache/sgdx";
  return "";
}

struct PStarCache {
  std::string file;      // empty: caching off
  std::string key_text;  // the fields a cached file must repeat

  /// The key hashes the problem as solved: the (normalised) float64 rows, the labels, the
  /// loss and the exact bits of l1 and l2.
  /// `data`: the tensors that hold the rows (the dense matrix, or CSR's indptr, indices, values).
  PStarCache(const std::string& dir, const std::vector<at::Tensor>& data, int64_t n, int64_t d,
             const at::Tensor& y, const std::string& loss, double l1, double l2) {
    uint64_t h = sgdx_examples::kFnv1aOffsetBasis;
    for (const auto& t : data) {
      auto c = t.contiguous();
      h = fnv1a(c.data_ptr(), size_t(c.numel()) * c.element_size(), h);
    }
    auto yc = y.contiguous();
    h = fnv1a(yc.data_ptr<double>(), size_t(yc.numel()) * sizeof(double), h);
    key_text = fmt::format("data {:016x} n {} d {}{}\nloss {}\nl1 {}\nl2 {}\n", h, n, d,
                           data.size() > 1 ? " csr" : "", loss, exact(l1), exact(l2));
    if (!dir.empty())
      file = fmt::format("{}/erm-pstar-{:016x}.txt", dir, fnv1a(key_text.data(), key_text.size()));
  }

  static void warn(const std::string& what) { std::fprintf(stderr, "sgdx-erm: warning: %s\n", what.c_str()); }

  /// The cached minimiser, when the file exists, is intact and belongs to this problem.
  std::optional<at::Tensor> load(int64_t d) const {
    std::error_code ec;
    if (file.empty() || !std::filesystem::is_regular_file(file, ec)) return std::nullopt;
    std::ifstream in(file, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    auto bad = [&](const std::string& why) -> std::optional<at::Tensor> {
      warn("ignoring the P* cache file '" + file + "': " + why + "; recomputing P*");
      return std::nullopt;
    };
    const auto tail = text.rfind("checksum ");
    if (tail == std::string::npos) return bad("no checksum line");
    if (text.substr(tail) != fmt::format("checksum {:016x}\n", fnv1a(text.data(), tail)))
      return bad("checksum mismatch (truncated or edited)");
    const std::string head = std::string(kCacheMagic) + "\n" + key_text;
    if (text.compare(0, head.size(), head) != 0) return bad("written for another problem or format");
    std::istringstream body(text.substr(head.size(), tail - head.size()));
    std::vector<double> w;
    std::string word;
    for (std::string tok; body >> word >> tok;) {
      if (word != "w") return bad("unexpected field '" + word + "'");
      char* end = nullptr;
      const double v = std::strtod(tok.c_str(), &end);
      if (*end != '\0' || !std::isfinite(v)) return bad("bad number '" + tok + "'");
      w.push_back(v);
    }
    if (int64_t(w.size()) != d) return bad(fmt::format("{} weights for {} features", w.size(), d));
    return torch::tensor(w, torch::kDouble);
  }

  /// Atomic (sgdx_examples::write_atomically); a failure only warns.
  void save(const at::Tensor& w) const {
    if (file.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(file).parent_path(), ec);
    std::string text = std::string(kCacheMagic) + "\n" + key_text;
    auto wc = w.contiguous();
    for (int64_t j = 0; j < wc.numel(); ++j) text += "w " + exact(wc.data_ptr<double>()[j]) + "\n";
    text += fmt::format("checksum {:016x}\n", fnv1a(text.data(), text.size()));
    try {
      sgdx_examples::write_atomically(file, text);
    } catch (const std::exception& e) {
      warn(std::string(e.what()) + " (the P* cache); continuing without the cache");
    }
  }
};

}  // namespace sgdx_erm

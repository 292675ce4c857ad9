// CLI11 validators for the example programs. CLI11 converts "nan", "inf" and "1e400" into
// doubles that pass its own range checks (NaN compares false with every bound), saturates
// out-of-range integers at INT64_MAX and wraps "-1" into an unsigned option; and it prints
// its ranges as 300-digit numbers. These validators refuse all of that, and their messages
// name the value (CLI11 puts the option's name in front): "--l1: must be a finite number >= 0,
// got 'nan'".
#pragma once
#include <fmt/core.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>

namespace sgdx_examples {

namespace detail {

inline std::string bound_text(double lo, double hi, bool lo_open) {
  const bool has_lo = lo > -std::numeric_limits<double>::infinity();
  const bool has_hi = hi < std::numeric_limits<double>::infinity();
  if (has_lo && has_hi) return fmt::format("in {}{:g}, {:g}]", lo_open ? "(" : "[", lo, hi);
  if (has_lo) return fmt::format("{} {:g}", lo_open ? ">" : ">=", lo);
  if (has_hi) return fmt::format("<= {:g}", hi);
  return "";
}

}  // namespace detail

/// A finite number x with lo <= x <= hi (lo < x when `lo_open`); either bound may be infinite.
inline CLI::Validator finite_number(double lo = -std::numeric_limits<double>::infinity(),
                                    double hi = std::numeric_limits<double>::infinity(),
                                    bool lo_open = false) {
  const std::string bounds = detail::bound_text(lo, hi, lo_open);
  const std::string want = "must be a finite number" + (bounds.empty() ? "" : " " + bounds);
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        const char* begin = s.c_str();
        char* end = nullptr;
        const double v = std::strtod(begin, &end);  // overflow gives inf, refused below
        const bool parsed = !s.empty() && end == begin + s.size();
        if (!parsed || !std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo))
          return want + ", got '" + s + "'";
        return "";
      },
      bounds.empty() ? "FINITE" : "FINITE " + bounds);
}

/// A decimal integer x with lo <= x <= hi, exactly as written (no saturation, no wrapping).
inline CLI::Validator integer(int64_t lo = std::numeric_limits<int64_t>::min(),
                              int64_t hi = std::numeric_limits<int64_t>::max()) {
  const bool has_lo = lo > std::numeric_limits<int64_t>::min(),
             has_hi = hi < std::numeric_limits<int64_t>::max();
  const std::string bounds = has_lo && has_hi ? fmt::format("in [{}, {}]", lo, hi)
                             : has_lo         ? fmt::format(">= {}", lo)
                             : has_hi         ? fmt::format("<= {}", hi)
                                              : "";
  const std::string want = "must be an integer" + (bounds.empty() ? "" : " " + bounds);
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        const char* begin = s.c_str() + (!s.empty() && s[0] == '+');
        int64_t v = 0;
        const auto [ptr, ec] = std::from_chars(begin, s.c_str() + s.size(), v);
        if (s.empty() || ec != std::errc() || ptr != s.c_str() + s.size() || v < lo || v > hi)
          return want + ", got '" + s + "'";
        return "";
      },
      bounds.empty() ? "INT" : "INT " + bounds);
}

/// A decimal integer in [0, 2^64 - 1] for uint64 options (CLI11 turns "-1" into 2^64 - 1).
inline CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        const char* begin = s.c_str() + (!s.empty() && s[0] == '+');
        uint64_t v = 0;
        const auto [ptr, ec] = std::from_chars(begin, s.c_str() + s.size(), v);
        if (s.empty() || ec != std::errc() || ptr != s.c_str() + s.size())
          return "must be an integer in [0, 18446744073709551615], got '" + s + "'";
        return "";
      },
      "");
}

/// Why `dir` cannot be used as an output directory ("" when it can): empty, too long, an
/// existing non-directory on its path, or an unwritable nearest existing ancestor. Creates
/// nothing, so a program can check its outputs before it starts any work.
inline std::string output_directory_problem(const std::string& dir) {
  namespace fs = std::filesystem;
  if (dir.empty()) return "the path is empty";
  // Room for the file names the programs write inside it.
  if (dir.size() + 64 >= PATH_MAX) return fmt::format("'{}' is too long ({} bytes)", dir, dir.size());
  for (const auto& part : fs::path(dir))
    if (part.native().size() > NAME_MAX)
      return fmt::format("'{}' has a name of {} bytes, more than the {} a file name may have", dir,
                         part.native().size(), NAME_MAX);
  fs::path p(dir);
  while (true) {
    std::error_code ec;
    const auto st = fs::status(p, ec);
    if (fs::exists(st)) {
      if (!fs::is_directory(st))
        return p.string() == dir
                   ? fmt::format("'{}' exists and is not a directory", dir)
                   : fmt::format("'{}' is not a directory, so '{}' cannot be made", p.string(), dir);
      if (::access(p.c_str(), W_OK | X_OK) != 0)
        return fmt::format("'{}' is not writable ({})", p.string(), std::generic_category().message(errno));
      return "";
    }
    if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
      return fmt::format("'{}': {}", p.string(), ec.message());
    auto parent = p.parent_path();
    if (parent.empty()) parent = ".";
    if (parent == p) return fmt::format("no existing directory on the path '{}'", dir);
    p = parent;
  }
}

/// CLI11 form of output_directory_problem. CLI11 runs validators only on values given on the
/// command line: check a default output directory with output_directory_problem.
inline CLI::Validator output_directory() {
  return CLI::Validator([](std::string& s) { return output_directory_problem(s); }, "DIR");
}

}  // namespace sgdx_examples

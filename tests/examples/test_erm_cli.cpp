// sgdx-erm on the embedded default data (Debian's heart_scale) and on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_util.h"

namespace {
using Result = sgdx::testing::ProgramResult;
Result run(const std::string& args, const sgdx::testing::TempDir& dir) {
  return sgdx::testing::run_program(SGDX_ERM_EXE, args, dir);
}
}  // namespace

TEST(ErmCli, RunsOnHeartScaleAndPrintsTheTable) {
  if (!std::filesystem::exists("/usr/share/doc/liblinear-tools/examples/heart_scale"))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  sgdx::testing::TempDir dir;
  auto r = run("--l2 1e-3 --passes 40 --out " + dir.file("out"), dir);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* m : {"| sgd |", "| svrg |", "| katyusha |", "| dasvrda |"})
    EXPECT_NE(r.out.find(m), std::string::npos) << m << "\n" << r.out;
  EXPECT_NE(r.out.find("(270 x 13)"), std::string::npos) << r.out;
  std::ifstream csv(dir.file("out/gap.csv"));
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header, "method,lr,passes,seconds,relative_gap");
  int rows = 0;
  for (std::string line; std::getline(csv, line);) ++rows;
  EXPECT_GE(rows, 4 * 39);  // a point per pass and method
}

TEST(ErmCli, BadInputGivesOneErrorLine) {
  sgdx::testing::TempDir dir;
  auto bad = [&](const std::string& args, const std::string& needle) {
    auto r = run(args + " --out " + dir.file("out"), dir);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.file("out"))) << args;
  };
  bad("--l1 -1", "--l1");
  bad("--methods svrg,adam", "unknown method 'adam'");
  bad("--data /nonexistent/file", "cannot open LIBSVM file");
  bad("--l1 0 --l2 0", "needs l1 > 0 or l2 > 0");
  bad("--batch 1000", "--batch 1000 exceeds n = 270");
}

// An output path under a regular file: one error line naming the path, not an abort.
TEST(ErmCli, OutputUnderAFileIsOneErrorLine) {
  if (!std::filesystem::exists("/usr/share/doc/liblinear-tools/examples/heart_scale"))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  sgdx::testing::TempDir dir;
  std::ofstream(dir.file("afile")) << "x";
  auto r = run("--l2 1e-3 --passes 2 --out " + dir.file("afile/sub"), dir);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("afile/sub"), std::string::npos) << r.err;
}

namespace {
// Runs of this binary cache P* in a directory of their own, not in the user's cache.
const bool kPrivatePStarCache = [] {
  static sgdx::testing::TempDir dir;
  return setenv("XDG_CACHE_HOME", dir.path.c_str(), 1) == 0;
}();

std::string p_star_line(const std::string& out) {
  const auto at = out.find("P* = ");
  return at == std::string::npos ? "" : out.substr(at, out.find(" (", at) - at);  // "P* = 0.39..."
}
}  // namespace

TEST(ErmCli, PStarIsCertifiedCachedAndRecheckedWhenTheCacheIsCorrupt) {
  if (!std::filesystem::exists("/usr/share/doc/liblinear-tools/examples/heart_scale"))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  sgdx::testing::TempDir dir;
  const std::string args = "--l1 1e-3 --l2 1e-3 --methods svrg --passes 2 --pstar-cache " + dir.file("cache") +
                           " --out " + dir.file("out");
  auto first = run(args, dir);
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_NE(first.out.find("(proximal Newton:"), std::string::npos) << first.out;
  EXPECT_EQ(first.err.find("sgdx-erm: warning"), std::string::npos) << first.err;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir.file("cache"))) files.push_back(e.path());
  ASSERT_EQ(files.size(), 1u);  // no temporary left behind
  const std::string p_star = p_star_line(first.out);

  auto second = run(args, dir);
  ASSERT_EQ(second.code, 0) << second.err;
  EXPECT_NE(second.out.find("(cached in " + files[0].string() + ", duality gap re-checked"), std::string::npos)
      << second.out;
  EXPECT_EQ(p_star_line(second.out), p_star);

  // Another problem (l2) gets its own file.
  auto other = run("--l2 2e-3 --methods svrg --passes 2 --pstar-cache " + dir.file("cache") + " --out " + dir.file("out"), dir);
  ASSERT_EQ(other.code, 0) << other.err;
  EXPECT_NE(other.out.find("(Newton-CG:"), std::string::npos) << other.out;

  // A flipped digit in a weight: the checksum catches it, P* is recomputed and rewritten.
  auto bytes = sgdx::testing::read_bytes(files[0].string());
  auto w_at = std::string(bytes.begin(), bytes.end()).find("\nw ") + 3;
  if (bytes[w_at] == '-') ++w_at;
  bytes[w_at] = bytes[w_at] == '1' ? '2' : '1';
  sgdx::testing::write_bytes(files[0].string(), bytes, false);
  auto corrupt = run(args, dir);
  ASSERT_EQ(corrupt.code, 0) << corrupt.err;
  EXPECT_NE(corrupt.err.find("warning: ignoring the P* cache file"), std::string::npos) << corrupt.err;
  EXPECT_NE(corrupt.err.find("checksum mismatch"), std::string::npos) << corrupt.err;
  EXPECT_NE(corrupt.out.find("(proximal Newton:"), std::string::npos) << corrupt.out;
  EXPECT_EQ(p_star_line(corrupt.out), p_star);

  // A consistent file (checksum recomputed) whose minimiser is wrong: the re-certification catches it.
  std::string text;
  {
    auto b = sgdx::testing::read_bytes(files[0].string());
    text.assign(b.begin(), b.end());
  }
  const auto at = text.find("\nw ") + 1;
  text.replace(at, text.find('\n', at) - at, "w 8");
  text = text.substr(0, text.rfind("checksum "));
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  char sum[32];
  std::snprintf(sum, sizeof(sum), "checksum %016llx\n", static_cast<unsigned long long>(h));
  std::ofstream(files[0]) << text << sum;
  auto wrong = run(args, dir);
  ASSERT_EQ(wrong.code, 0) << wrong.err;
  EXPECT_NE(wrong.err.find("duality gap is"), std::string::npos) << wrong.err;
  EXPECT_EQ(p_star_line(wrong.out), p_star);

  auto off = run("--l1 1e-3 --l2 1e-3 --methods svrg --passes 2 --pstar-cache off --out " + dir.file("out"), dir);
  ASSERT_EQ(off.code, 0) << off.err;
  EXPECT_NE(off.out.find("(proximal Newton:"), std::string::npos) << off.out;
}

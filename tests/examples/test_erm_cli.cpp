// sgdx-erm on the embedded default data (Debian's heart_scale) and on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

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

namespace {
// Runs `args` and expects exit 1, one line starting "sgdx-erm: error:" that contains `needle`,
// no P* computed (every check comes first) and nothing under `dir`/out.
Result expect_refused(const std::string& args, const std::string& needle, const sgdx::testing::TempDir& dir) {
  auto r = run(args, dir);
  EXPECT_NE(r.code, 0) << args << "\n" << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << "\n" << r.err;
  EXPECT_EQ(r.err.rfind("sgdx-erm: error: ", 0), 0u) << args << "\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
  EXPECT_EQ(r.out.find("P* ="), std::string::npos) << args << "\n" << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir.file("out"))) << args;
  return r;
}

// A small LIBSVM file in `dir`.
std::string libsvm_file(const sgdx::testing::TempDir& dir, const std::string& name, const std::string& text) {
  std::ofstream(dir.file(name)) << text;
  return dir.file(name);
}
}  // namespace

// CLI11 parses "nan", "inf" and "1e400", saturates big integers and wraps "-1" into the seed:
// every numeric option is checked as written, by name and value.
TEST(ErmCli, FloatOptionsAreFiniteAndInRange) {
  sgdx::testing::TempDir dir;
  const std::string out = " --out " + dir.file("out");
  for (const char* v : {" nan", " inf", "=-inf", " 1e400", " ''", " 1,5"})
    expect_refused(std::string("--l1") + v + out, "--l1: must be a finite number >= 0, got '", dir);
  expect_refused("--l2 inf" + out, "--l2: must be a finite number >= 0, got 'inf'", dir);
  expect_refused("--l2 -1e-3" + out, "--l2: must be a finite number >= 0, got '-1e-3'", dir);
  expect_refused("--passes nan" + out, "--passes: must be a finite number in [1, 1e+06], got 'nan'", dir);
  expect_refused("--passes 0.5" + out, "--passes: must be a finite number in [1, 1e+06], got '0.5'", dir);
  expect_refused("--passes 1e7" + out, "--passes: must be a finite number in [1, 1e+06], got '1e7'", dir);
}

TEST(ErmCli, IntegerOptionsAreExactAndInRange) {
  sgdx::testing::TempDir dir;
  const std::string out = " --out " + dir.file("out");
  expect_refused("--batch -3" + out, "--batch: must be an integer >= 0, got '-3'", dir);
  expect_refused("--batch 99999999999999999999" + out, "--batch: must be an integer >= 0", dir);
  expect_refused("--batch nan" + out, "--batch: must be an integer >= 0, got 'nan'", dir);
  expect_refused("--features -1" + out, "--features: must be an integer >= 0, got '-1'", dir);
  expect_refused("--features 1.5" + out, "--features: must be an integer >= 0, got '1.5'", dir);
  expect_refused("--seed -1" + out, "--seed: must be an integer in [0, 18446744073709551615], got '-1'", dir);
  expect_refused("--seed 18446744073709551616" + out, "--seed: must be an integer", dir);
}

TEST(ErmCli, EmptyListsItemsAndPathsAreRefused) {
  sgdx::testing::TempDir dir;
  const std::string out = " --out " + dir.file("out");
  expect_refused("--methods ''" + out, "--methods is empty", dir);
  expect_refused("--methods svrg,,sgd" + out, "--methods 'svrg,,sgd' has an empty item", dir);
  expect_refused("--methods svrg," + out, "--methods 'svrg,' has an empty item", dir);
  expect_refused("--methods ,svrg" + out, "--methods ',svrg' has an empty item", dir);
  expect_refused("--methods svrg,sgd,svrg" + out, "--methods 'svrg,sgd,svrg' lists 'svrg' twice", dir);
  expect_refused("--data ''" + out, "--data is empty", dir);
  std::filesystem::create_directories(dir.file("adir"));
  expect_refused("--data " + dir.file("adir") + out, "LIBSVM file '" + dir.file("adir") + "' is a directory",
                 dir);
  expect_refused("--pstar-cache ''" + out, "--pstar-cache: the path is empty", dir);
  expect_refused("--liblinear --l1 1e-3 --l2 1e-3" + out, "--liblinear compares pure-L2", dir);
  expect_refused("--liblinear --loss squares" + out, "--liblinear compares pure-L2", dir);
}

// Output paths that cannot be made: one line naming the path, before P* or any training.
TEST(ErmCli, UnusableOutputPathsAreRefusedBeforeAnyWork) {
  sgdx::testing::TempDir dir;
  std::ofstream(dir.file("afile")) << "x";
  expect_refused("--out ''", "--out: the path is empty", dir);
  expect_refused("--out " + dir.file("afile"), "'" + dir.file("afile") + "' exists and is not a directory",
                 dir);
  expect_refused("--out " + dir.file("afile/sub/deeper"),
                 "'" + dir.file("afile") + "' is not a directory, so '" + dir.file("afile/sub/deeper") +
                     "' cannot be made",
                 dir);
  expect_refused("--out " + dir.file(std::string(300, 'x')), "a name of 300 bytes", dir);
  std::string deep = dir.file("out");
  while (deep.size() < 5000) deep += "/" + std::string(200, 'y');
  expect_refused("--out " + deep, "is too long", dir);
  expect_refused("--pstar-cache " + dir.file("afile") + " --out " + dir.file("out"),
                 "--pstar-cache: '" + dir.file("afile") + "' exists and is not a directory", dir);
  // The default --out, runs/erm, under a file named runs in the working directory.
  std::ofstream(dir.file("runs")) << "x";
  auto r = sgdx::testing::run_program("cd '" + dir.path.string() + "' && " SGDX_ERM_EXE, "", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err, "sgdx-erm: error: --out: 'runs' is not a directory, so 'runs/erm' cannot be made\n");
  // A result file that exists as a directory.
  sgdx::testing::TempDir taken;
  std::filesystem::create_directories(taken.file("gap.csv"));
  expect_refused("--out " + taken.path.string(),
                 "--out: '" + taken.path.string() + "/gap.csv' is a directory", dir);
  if (::geteuid() != 0) {  // root may write anywhere
    std::filesystem::create_directories(dir.file("ro"));
    std::filesystem::permissions(dir.file("ro"),
                                 std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
    expect_refused("--out " + dir.file("ro/out"), "'" + dir.file("ro") + "' is not writable", dir);
  }
}

// Degenerate data: one line naming the file, before P* or any training.
TEST(ErmCli, DegenerateDataIsRefusedByName) {
  sgdx::testing::TempDir dir;
  const std::string out = " --out " + dir.file("out");
  auto refused = [&](const std::string& text, const std::string& needle, const std::string& more = "") {
    const auto f = libsvm_file(dir, "data.txt", text);
    auto r = expect_refused("--data " + f + more + out, needle, dir);
    EXPECT_NE(r.err.find("'" + f + "'"), std::string::npos) << r.err;
  };
  refused("", "holds no examples");
  refused("# only a comment\n", "holds no examples");
  refused("+1\n-1\n", "has no features");
  refused("+1 1:0 2:0\n-1 2:0\n", "every example is zero");
  refused("+1 1:0\n-1 2:0\n", "every example is zero", " --features 5");
  refused("+1 1:1e200 2:1e200\n-1 1:1\n", "the squared norm of example 1 overflows float64");
  expect_refused("--batch 4 --data " + libsvm_file(dir, "three.txt", "+1 1:1\n-1 1:1 3:2\n+1 1:1\n") + out,
                 "--batch 4 exceeds n = 3", dir);
  refused("+1 1:1\n-1 2:1\n", "dense float64 matrix", " --features 1000000000000");
  refused("+1 1:1\n-1 2:1\n", "overflows int64", " --features 9223372036854775807");
  for (const char* v : {"nan", "inf", "-inf"}) refused(std::string("+1 1:1 2:") + v + "\n-1 1:1\n", "");
}

// A tiny problem runs end to end and leaves only its results in --out (no temporaries).
TEST(ErmCli, TinyProblemWritesOnlyItsResults) {
  sgdx::testing::TempDir dir;
  const auto f = libsvm_file(dir, "tiny.txt", "+1 1:1 2:0.5\n-1 1:-1 3:1\n+1 2:1 3:0.5\n-1 1:-0.5 2:-1\n");
  auto r = run(
      "--data " + f + " --l2 1e-2 --passes 3 --methods sgd,svrg --pstar-cache off --out " + dir.file("out"),
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("(4 x 3)"), std::string::npos) << r.out;
  for (const auto& e : std::filesystem::directory_iterator(dir.file("out"))) {
    const auto name = e.path().filename().string();
    EXPECT_TRUE(name == "gap.csv" || name == "gap.gp" || name == "gap.png") << name;
  }
  EXPECT_TRUE(std::filesystem::exists(dir.file("out/gap.csv")));
}

// An output path under a regular file: one error line naming the path, not an abort.
TEST(ErmCli, OutputUnderAFileIsOneErrorLine) {
  if (!std::filesystem::exists("/usr/share/doc/liblinear-tools/examples/heart_scale"))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  sgdx::testing::TempDir dir;
  std::ofstream(dir.file("afile")) << "x";
  auto r = run("--l2 1e-3 --passes 2 --out " + dir.file("afile/sub"), dir);
  EXPECT_NE(r.code, 0) << r.err;
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
  const std::string args = "--l1 1e-3 --l2 1e-3 --methods svrg --passes 2 --pstar-cache " +
                           dir.file("cache") + " --out " + dir.file("out");
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
  EXPECT_NE(second.out.find("(cached in " + files[0].string() + ", duality gap re-checked"),
            std::string::npos)
      << second.out;
  EXPECT_EQ(p_star_line(second.out), p_star);

  // Another problem (l2) gets its own file.
  auto other = run(
      "--l2 2e-3 --methods svrg --passes 2 --pstar-cache " + dir.file("cache") + " --out " + dir.file("out"),
      dir);
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

  auto off =
      run("--l1 1e-3 --l2 1e-3 --methods svrg --passes 2 --pstar-cache off --out " + dir.file("out"), dir);
  ASSERT_EQ(off.code, 0) << off.err;
  EXPECT_NE(off.out.find("(proximal Newton:"), std::string::npos) << off.out;
}

// --storage sparse runs svrg, katyusha and dasvrda with lazy updates on CSR: the same curves
// (every pass's gap) as the dense optimizers on the same draws; sgd, without a sparse form, is
// refused by name, and auto holds sparse data sparse when every method has a sparse form.
TEST(ErmCli, SparseStorageGivesTheDenseCurves) {
  if (!std::filesystem::exists("/usr/share/doc/liblinear-tools/examples/heart_scale"))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  sgdx::testing::TempDir dir;
  std::array<std::vector<std::string>, 2> rows;
  for (int k = 0; k < 2; ++k) {
    const std::string storage = k == 0 ? "dense" : "sparse";
    auto r =
        run("--methods svrg,katyusha,dasvrda --l1 1e-3 --l2 1e-4 --passes 12 --pstar-cache off --storage " +
                storage + " --out " + dir.file(storage),
            dir);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("(270 x 13), " + storage), std::string::npos) << r.out;
    std::ifstream csv(dir.file(storage + "/gap.csv"));
    for (std::string line; std::getline(csv, line);) {  // method, lr, passes, gap (not the seconds)
      std::stringstream ss(line);
      std::string method, lr, passes, seconds, gap;
      std::getline(ss, method, ',');
      std::getline(ss, lr, ',');
      std::getline(ss, passes, ',');
      std::getline(ss, seconds, ',');
      std::getline(ss, gap, ',');
      rows[k].push_back(method + "," + lr + "," + passes + "," + gap);
    }
  }
  EXPECT_EQ(rows[0].size(), 1u + 3u * 12u);
  EXPECT_EQ(rows[0], rows[1]);
  expect_refused("--storage sparse --methods svrg,sgd --out " + dir.file("k"),
                 "--methods sgd: proximal SGD has no sparse form", dir);
  // 40 rows over 200 features, 2 % non-zeros: auto holds it sparse unless sgd is asked for.
  std::string text;
  for (int i = 0; i < 40; ++i) {
    const int j = 1 + (7 * i) % 50;  // columns j, j + 50, j + 120: increasing, distinct
    text += std::string(i % 2 ? "+1" : "-1") + " " + std::to_string(j) + ":1 " + std::to_string(j + 50) +
            ":0.5 " + std::to_string(j + 120) + ":-1\n";
  }
  const auto f = libsvm_file(dir, "sparse.txt", text);
  auto r = run(
      "--data " + f +
          " --features 200 --l2 1e-2 --methods svrg,katyusha,dasvrda --passes 3 --pstar-cache off --out " +
          dir.file("a"),
      dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("(40 x 200), sparse (120 non-zeros)"), std::string::npos) << r.out;
  r = run("--data " + f + " --features 200 --l2 1e-2 --methods svrg,sgd --passes 3 --pstar-cache off --out " +
              dir.file("b"),
          dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("(40 x 200), dense"), std::string::npos) << r.out;
}

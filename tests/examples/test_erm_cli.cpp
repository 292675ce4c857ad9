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

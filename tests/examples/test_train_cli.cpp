// sgdx-train as a user meets it: --help, bad input (one clear error line,
// non-zero exit, nothing written) and a small complete run.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "test_util.h"

using sgdx::testing::TempDir;

namespace {

using Result = sgdx::testing::ProgramResult;
Result run(const std::string& args, const sgdx::testing::TempDir& dir) {
  return sgdx::testing::run_program(SGDX_TRAIN_EXE, args, dir);
}

int lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

void expect_one_error_line(const Result& r, const std::string& needle, const TempDir& dir) {
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("error"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir.path / "out")) << "output written despite the error";
}

}  // namespace

TEST(TrainCli, HelpListsOptions) {
  TempDir dir;
  auto r = run("--help", dir);
  EXPECT_EQ(r.code, 0);
  for (const char* opt : {"--dataset", "--optimizer", "--compare", "--lr", "--epochs", "--device",
                          "--rsgd-gamma", "--clusters", "--gq-path"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
}

TEST(TrainCli, BadInputGivesOneClearErrorLine) {
  TempDir dir;
  const std::string out = " --out " + dir.file("out");
  expect_one_error_line(run("--dataset imagenet" + out, dir), "imagenet", dir);
  expect_one_error_line(run("--optimizer lion" + out, dir), "lion", dir);
  expect_one_error_line(run("--compare sgd,lion" + out, dir), "unknown optimizer 'lion'", dir);
  expect_one_error_line(run("--lr -0.1" + out, dir), "--lr", dir);
  expect_one_error_line(run("--optimizer rsgd --rsgd-gamma 1.5" + out, dir),
                        "gamma must be in (0, 1), got 1.5", dir);
  expect_one_error_line(run("--optimizer rsgd --rsgd-gamma 0" + out, dir), "gamma must be in (0, 1), got 0",
                        dir);
  expect_one_error_line(run("--epochs 0" + out, dir), "--epochs", dir);
  expect_one_error_line(run("--dataset mnist --data-dir /nonexistent" + out, dir), "/nonexistent", dir);
  expect_one_error_line(run("--balance upsample" + out, dir), "upsample", dir);
  expect_one_error_line(run("--tau 0" + out, dir), "--tau: must be a finite number > 0, got '0'", dir);
  expect_one_error_line(run("--compare sgd@ts:-1" + out, dir), "tau must be > 0, got -1", dir);
  expect_one_error_line(run("--compare sgd@oversample" + out, dir), "unknown balance 'oversample'", dir);
  expect_one_error_line(run("--dataset teacher --augment" + out, dir),
                        "--augment: the teacher dataset has vectors, not images", dir);
  expect_one_error_line(run("--augment --no-augment" + out, dir), "--no-augment", dir);
  expect_one_error_line(run("--dataset teacher --validation -5" + out, dir), "--validation", dir);
  expect_one_error_line(run("--dataset teacher --validation 10000" + out, dir),
                        "10000 examples requested from a training set of 10000", dir);
}

TEST(TrainCli, EmptyListsNonFiniteNumbersAndRangesAreRefused) {
  TempDir dir;
  const std::string out = " --out " + dir.file("out");
  expect_one_error_line(run("--compare ''" + out, dir), "--compare: the list is empty", dir);
  expect_one_error_line(run("--compare sgd,,adam" + out, dir), "--compare: item 2 of 'sgd,,adam' is empty",
                        dir);
  expect_one_error_line(run("--compare sgd," + out, dir), "item 2 of 'sgd,' is empty", dir);
  expect_one_error_line(run("--out ''", dir), "--out: the path is empty", dir);
  { std::ofstream(dir.file("a-file")) << "x"; }
  auto r = run("--out " + dir.file("a-file") + "/sub", dir);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("is not a directory, so"), std::string::npos) << r.err;
  for (const char* opt : {"--lr", "--momentum", "--weight-decay", "--rsgd-gamma", "--rsgd-max-prob", "--mix",
                          "--score-beta", "--tau", "--imbalance"}) {
    for (const char* bad : {"nan", "inf", "-inf"}) {
      auto r = run(std::string(opt) + " " + bad + out, dir);
      expect_one_error_line(r, opt, dir);
      EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
    }
  }
  expect_one_error_line(run("--imbalance 0.5" + out, dir), "must be 0 (off) or a ratio >= 1, got 0.5", dir);
  expect_one_error_line(run("--sampling loss --presample 1" + out, dir),
                        "--presample must be 0 (off) or a ratio >= 2", dir);
  expect_one_error_line(run("--sampling loss --presample 4611686018427387904 --batch-size 4" + out, dir),
                        "too large a presample batch", dir);
  expect_one_error_line(run("--batch-size 99999999999999999999" + out, dir), "--batch-size", dir);
  expect_one_error_line(run("--resume ''" + out, dir), "--resume: the directory must not be empty", dir);
  expect_one_error_line(run("--resume " + dir.file("elsewhere") + out, dir), "differ", dir);
  expect_one_error_line(run("--stop-after 0" + out, dir), "--stop-after", dir);
  expect_one_error_line(run("--checkpoint-every -1" + out, dir), "--checkpoint-every", dir);
}

TEST(TrainCli, ImbalancedBalancingModesRun) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 400, 28, 28, true);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 50, 28, 28, true);
  auto r = run("--dataset mnist --data-dir " + dir.path.string() +
                   " --imbalance 10 --epochs 2 --batch-size 16 "
                   "--compare sgdm,sgdm@ts:5,sgdm@scalarize:5,sgdm@cooldown:5 --no-progress --out " +
                   dir.file("out"),
               dir);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* label : {"| sgdm |", "| sgdm@ts:5 |", "| sgdm@scalarize:5 |", "| sgdm@cooldown:5 |"})
    EXPECT_NE(r.out.find(label), std::string::npos) << label << "\n" << r.out;
  EXPECT_NE(r.out.find("tail acc."), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("F(5) ="), std::string::npos) << r.out;  // the summary helper
  std::ifstream js(dir.file("out/metrics.json"));
  auto j = nlohmann::json::parse(js);
  EXPECT_EQ(j["runs"][1]["epochs"][0]["class_accuracy"].size(), 10u);
  // 40 training examples per class become floor(40 * 10^(-c/9)): 40, 30, 23, 18, 14, 11, 8, 6, 5, 4
  // -> 159 examples, 10 batches of 16 per epoch (also for the temperature sampler).
  EXPECT_EQ(j["config"]["train_examples"].get<int>(), 159);
  for (int run = 0; run < 4; ++run) EXPECT_EQ(j["runs"][run]["epochs"][1]["steps"].get<int>(), 20) << run;
}

TEST(TrainCli, ImportanceSamplingModesRun) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 200, 28, 28, true);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 50, 28, 28, true);
  const std::string data =
      "--dataset mnist --data-dir " + dir.path.string() + " --epochs 2 --batch-size 16 --no-progress";
  auto r = run(data + " --compare sgd,sgd+loss,sgd+upper-bound,sgd+exact --out " + dir.file("out"), dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| Q | tau |"), std::string::npos) << r.out;
  std::ifstream js(dir.file("out/metrics.json"));
  auto j = nlohmann::json::parse(js);
  ASSERT_EQ(j["runs"].size(), 4u);
  EXPECT_TRUE(j["runs"][0]["epochs"][1]["quality"].is_null());  // uniform: no quality metric (NaN)
  for (int k = 1; k < 4; ++k) {
    const double q = j["runs"][k]["epochs"][1]["quality"].get<double>();
    EXPECT_LE(q, 1.0 + 1e-9) << k;
    EXPECT_EQ(j["runs"][k]["epochs"][1]["steps"].get<int>(), 26) << k;  // 13 batches of 16 per epoch
  }
  auto p = run(data + " --presample 3 --compare sgd+loss,sgd+upper-bound --out " + dir.file("out2"), dir);
  ASSERT_EQ(p.code, 0) << p.err;
  std::ifstream js2(dir.file("out2/metrics.json"));
  auto j2 = nlohmann::json::parse(js2);
  EXPECT_GE(j2["runs"][0]["epochs"][1]["tau"].get<double>(), 0.0);
  EXPECT_EQ(j2["runs"][1]["epochs"][1]["steps"].get<int>(), 26);
  const std::string out = " --out " + dir.file("bad");
  auto e1 = run(data + " --presample 3 --sampling exact" + out, dir);
  EXPECT_NE(e1.code, 0);
  EXPECT_NE(e1.err.find("use loss or upper-bound with --presample"), std::string::npos) << e1.err;
  auto e2 = run(data + " --compare sgd@ts:5+loss" + out, dir);
  EXPECT_NE(e2.err.find("cannot be combined"), std::string::npos) << e2.err;
  auto e3 = run(data + " --compare sgd+random" + out, dir);
  EXPECT_NE(e3.err.find("unknown sampling 'random'"), std::string::npos) << e3.err;
  auto e4 = run(data + " --sampling loss --mix 0" + out, dir);
  EXPECT_NE(e4.code, 0);
  EXPECT_NE(e4.err.find("--mix"), std::string::npos) << e4.err;
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad")));
}

TEST(TrainCli, TruncatedIdxFileIsReportedByName) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 40, 28, 28, false);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 20, 28, 28, true);
  const auto images = dir.file("train-images-idx3-ubyte");
  std::filesystem::resize_file(images, std::filesystem::file_size(images) - 100);
  auto r = run("--dataset mnist --data-dir " + dir.path.string() + " --out " + dir.file("out"), dir);
  expect_one_error_line(r, "train-images-idx3-ubyte' has", dir);
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
}

TEST(TrainCli, SmallComparisonWritesMetricsAndTable) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 64, 28, 28, true);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 32, 28, 28, true);
  auto r = run("--dataset mnist --data-dir " + dir.path.string() +
                   " --compare sgd,rsgd --epochs 2 --seeds 2 "
                   "--batch-size 16 --no-progress --out " +
                   dir.file("out"),
               dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| rsgd | 2 |"), std::string::npos) << r.out;
  std::ifstream csv(dir.file("out/metrics.csv"));
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(
      header,
      "optimizer,seed,epoch,steps,train_loss,test_loss,test_accuracy,seconds,head_accuracy,tail_accuracy,"
      "grad_norm_mean,grad_norm_var,quality,tau,val_loss,val_accuracy");
  int rows = 0;
  for (std::string line; std::getline(csv, line);) ++rows;
  EXPECT_EQ(rows, 2 * 2 * 2);  // optimizers x seeds x epochs
  std::ifstream js(dir.file("out/metrics.json"));
  auto j = nlohmann::json::parse(js);
  EXPECT_EQ(j["runs"].size(), 4u);
  EXPECT_EQ(j["runs"][0]["epochs"][1]["steps"].get<int>(), 8);  // 64 / 16 * 2
  EXPECT_TRUE(std::filesystem::exists(dir.file("out/summary.md")));
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    EXPECT_TRUE(std::filesystem::exists(dir.file("out/training.png")));
    EXPECT_GT(std::filesystem::file_size(dir.file("out/training.png")), 10000u);
  }
  // Only the results: no plot intermediates or temporary files in the output directory.
  for (const auto& entry : std::filesystem::directory_iterator(dir.file("out"))) {
    const auto name = entry.path().filename().string();
    EXPECT_TRUE(name == "metrics.csv" || name == "metrics.json" || name == "summary.md" ||
                name == "training.png")
        << "left behind: " << name;
  }
}

TEST(TrainCli, GradQueuePlainAndClusteredRun) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 96, 28, 28, true);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 32, 28, 28, true);
  const std::string data =
      "--dataset mnist --data-dir " + dir.path.string() + " --epochs 2 --batch-size 24 --no-progress";
  auto r = run(data + " --compare sgdm,gqsgdm,gqsgdm-k3 --out " + dir.file("out"), dir);
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream js(dir.file("out/metrics.json"));
  auto j = nlohmann::json::parse(js);
  ASSERT_EQ(j["runs"].size(), 3u);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(j["runs"][k]["epochs"][1]["steps"].get<int>(), 8) << k;
    EXPECT_TRUE(std::isfinite(j["runs"][k]["epochs"][1]["train_loss"].get<double>())) << k;
  }
  EXPECT_NE(r.out.find("| gqsgdm-k3 |"), std::string::npos) << r.out;
  // --optimizer gqsgdm --clusters 4 (the command), both paths, and the global scope.
  for (const char* extra :
       {"", " --gq-path reference", " --gq-scope global --gq-granularity tensor --gq-storage ema"}) {
    auto c = run(data + " --optimizer gqsgdm --clusters 4" + extra + " --out " + dir.file("c"), dir);
    ASSERT_EQ(c.code, 0) << extra << c.err;
    EXPECT_NE(c.out.find("| gqsgdm-k4 |"), std::string::npos) << c.out;
  }
  TempDir edir;  // errors: nothing may be written under edir/out
  const std::string out = " --out " + edir.file("out");
  expect_one_error_line(run(data + " --optimizer gqsgdm --clusters 25" + out, edir),
                        "clusters = 25 exceeds the batch size 24", edir);
  expect_one_error_line(run(data + " --compare gqsgdm-kx" + out, edir), "must be an integer >= 1, got 'x'",
                        edir);
  expect_one_error_line(run(data + " --compare gqsgdm-k2+loss" + out, edir), "cannot be combined", edir);
  expect_one_error_line(run(data + " --optimizer gqsgdm --gq-scope layer" + out, edir), "layer", edir);
}

// --amp: bf16 and fp16 run on the CPU too (CPU autocast; fp16 with the loss scaler, whose
// skipped steps are reported); the paths that run their own backward are refused by name.
TEST(TrainCli, MixedPrecisionRunsAndRefusesOwnBackwardPaths) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 64, 28, 28, true);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 32, 28, 28, true);
  const std::string data = "--dataset mnist --data-dir " + dir.path.string() +
                           " --device cpu --epochs 2 --batch-size 16 --no-progress --no-plot";
  for (const std::string amp : {"bf16", "fp16"}) {
    auto r =
        run(data + " --amp " + amp + " --compare sgdm,adam,rsgd,gqsgdm --out " + dir.file("out-" + amp), dir);
    ASSERT_EQ(r.code, 0) << amp << r.err;
    std::ifstream js(dir.file("out-" + amp + "/metrics.json"));
    auto j = nlohmann::json::parse(js);
    EXPECT_EQ(j["config"]["amp"].get<std::string>(), amp);
    ASSERT_EQ(j["runs"].size(), 4u);
    for (int k = 0; k < 4; ++k) {
      const auto& e = j["runs"][k]["epochs"][1];
      EXPECT_EQ(e["steps"].get<int>(), 8) << amp << " run " << k;
      EXPECT_TRUE(std::isfinite(e["train_loss"].get<double>())) << amp << " run " << k;
      EXPECT_GT(e["grad_norm_mean"].get<double>(), 0.0) << amp << " run " << k;
    }
    const auto skipped = r.out.find("fp16: ");
    EXPECT_EQ(skipped != std::string::npos, amp == "fp16") << r.out;  // bf16 takes no scaler
    if (amp == "fp16")
      EXPECT_NE(r.out.find("steps skipped (inf/nan gradients), final loss scale"), std::string::npos);
  }
  TempDir edir;  // errors: nothing may be written under edir/out
  const std::string out = " --out " + edir.file("out");
  expect_one_error_line(run(data + " --amp fp16 --optimizer svrg" + out, edir),
                        "'svrg': --amp fp16 does not apply to svrg", edir);
  expect_one_error_line(run(data + " --amp bf16 --compare sgdm,gqsgdm-k2" + out, edir),
                        "'gqsgdm-k2': --amp bf16 does not apply to the clustered GradQueue step", edir);
  expect_one_error_line(run(data + " --amp bf16 --optimizer gqsgdm --clusters 3" + out, edir),
                        "does not apply to the clustered GradQueue step", edir);
  expect_one_error_line(run(data + " --amp fp16 --sampling exact" + out, edir),
                        "does not apply to --sampling exact", edir);
  expect_one_error_line(run(data + " --amp fp8" + out, edir), "--amp", edir);
}

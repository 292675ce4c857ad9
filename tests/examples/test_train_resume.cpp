// sgdx-train's checkpoints as a user meets them: a run stopped anywhere (step budget,
// SIGINT, SIGTERM, SIGKILL during a checkpoint write) and resumed gives the same
// bytes as a run that was never stopped; a checkpoint of another run is refused.
// The reference is the uninterrupted run of the same program: the claim under test
// is that stopping changes nothing, so every metric but wall-clock time and every
// parameter byte must agree.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "sgdx/checkpoint.h"
#include "sgdx/models/models.h"
#include "test_util.h"

using sgdx::testing::TempDir;

namespace {

namespace fs = std::filesystem;
using Result = sgdx::testing::ProgramResult;

Result run(const std::string& args, const TempDir& dir) {
  return sgdx::testing::run_program(SGDX_TRAIN_EXE, args, dir);
}

// A small, fast problem: 5 steps per epoch, 2 epochs, one thread (bit-identity
// needs the same thread count).
const std::string kBase =
    "--dataset teacher --train-subset 200 --batch-size 40 --epochs 2 --no-progress --no-plot --threads 1 "
    "--save-models";

// metrics.json without its wall-clock fields.
nlohmann::json metrics(const fs::path& dir) {
  std::ifstream in(dir / "metrics.json");
  auto j = nlohmann::json::parse(in);
  for (auto& r : j["runs"])
    for (auto& e : r["epochs"]) e.erase("seconds");
  return j;
}

std::vector<uint8_t> bytes(const fs::path& p) {
  return sgdx::testing::read_bytes(p.string());
}

// Every metric but time, and every saved model byte for byte.
void expect_same_results(const fs::path& a, const fs::path& b) {
  EXPECT_EQ(metrics(a), metrics(b));
  size_t models = 0;
  for (const auto& entry : fs::directory_iterator(a / "models")) {
    ++models;
    const auto other = b / "models" / entry.path().filename();
    ASSERT_TRUE(fs::exists(other)) << other;
    EXPECT_TRUE(bytes(entry.path()) == bytes(other)) << entry.path().filename() << " differs";
  }
  EXPECT_GT(models, 0u);
  EXPECT_FALSE(fs::exists(b / "checkpoint.pt")) << "a finished run keeps no checkpoint";
  for (const auto& entry : fs::directory_iterator(b))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

// Trains `args` uninterrupted into out-a and in slices of `slice` steps into out-b.
void expect_resume_bit_identical(const std::string& args, int slice, const std::string& base = kBase) {
  TempDir dir;
  const auto a = dir.path / "out-a", b = dir.path / "out-b";
  auto full = run(base + " " + args + " --out " + a.string(), dir);
  ASSERT_EQ(full.code, 0) << full.err;
  auto first =
      run(base + " " + args + " --out " + b.string() + " --stop-after " + std::to_string(slice), dir);
  ASSERT_EQ(first.code, 75) << first.err;
  EXPECT_NE(first.err.find("--resume " + b.string()), std::string::npos) << first.err;
  int invocations = 1;
  for (Result r = first; r.code == 75; ++invocations) {
    ASSERT_LT(invocations, 200) << "no progress";
    r = run(base + " " + args + " --resume " + b.string() + " --stop-after " + std::to_string(slice), dir);
    ASSERT_TRUE(r.code == 0 || r.code == 75) << r.err;
  }
  EXPECT_GT(invocations, 2);
  expect_same_results(a, b);
  // The runs trained: the optimizers reached different points.
  const auto j = metrics(a);
  ASSERT_GE(j["runs"].size(), 2u);
  EXPECT_NE(j["runs"][0]["epochs"][1]["train_loss"], j["runs"][1]["epochs"][1]["train_loss"]);
}

// Starts sgdx-train without waiting for it.
pid_t spawn(const std::string& args, const TempDir& dir) {
  const std::string cmd =
      std::string("exec ") + SGDX_TRAIN_EXE + " " + args + " >/dev/null 2>" + dir.file("spawn.err");
  const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char* const*>(argv), environ), 0);
  return pid;
}

int wait_status(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

}  // namespace

TEST(TrainResume, EveryOptimizerIsBitIdentical) {
  expect_resume_bit_identical("--compare sgd,sgdm,nesterov,adam,rsgd,svrg,gqsgdm,gqsgdm-k2", 7);
}

TEST(TrainResume, EverySamplingModeIsBitIdentical) {
  expect_resume_bit_identical(
      "--compare sgdm+loss,sgdm+upper-bound,sgdm+exact,sgdm@ts:2,sgdm@scalarize:2,sgdm@cooldown:2 --schedule "
      "cosine",
      3);
}

TEST(TrainResume, PresamplingSeedsAndLossScalingAreBitIdentical) {
  expect_resume_bit_identical("--presample 2 --compare sgdm+loss,sgdm+upper-bound --seeds 2", 4);
  expect_resume_bit_identical("--amp fp16 --compare sgdm,rsgd,gqsgdm", 6);
}

TEST(TrainResume, AugmentedCifarWithAValidationSplitIsBitIdentical) {
  TempDir data;
  // Augmentation is cifar10's default; 20 of the 100 training images are held out.
  const std::string base = "--dataset cifar10 --data-dir " +
                           sgdx::testing::write_tiny_cifar10(data.path / "cifar", 20, 10) +
                           " --validation 20 --batch-size 20 --epochs 2 --no-progress --no-plot --threads 1 "
                           "--save-models";
  expect_resume_bit_identical("--compare sgdm,rsgd", 3, base);
  expect_resume_bit_identical("--presample 2 --compare sgdm+loss,adam+upper-bound", 2, base);
  // Augmentation was on and changes what is trained; the validation split is measured.
  TempDir dir;
  const auto on = run(base + " --compare sgdm --out " + (dir.path / "on").string(), dir);
  const auto off = run(base + " --no-augment --compare sgdm --out " + (dir.path / "off").string(), dir);
  ASSERT_EQ(on.code, 0) << on.err;
  ASSERT_EQ(off.code, 0) << off.err;
  EXPECT_NE(on.out.find("80 train, 20 validation, 10 test examples, augmented: crop and flip"),
            std::string::npos)
      << on.out;
  EXPECT_NE(on.out.find("test figures: the first 10 of the 10000 CIFAR-10 test images"), std::string::npos);
  const auto m_on = metrics(dir.path / "on"), m_off = metrics(dir.path / "off");
  EXPECT_EQ(m_on["config"]["augment"], true);
  EXPECT_EQ(m_off["config"]["augment"], false);
  EXPECT_EQ(m_on["config"]["validation_examples"], 20);
  EXPECT_NE(m_on["runs"][0]["epochs"][1]["train_loss"], m_off["runs"][0]["epochs"][1]["train_loss"]);
  const auto val = m_on["runs"][0]["epochs"][1]["val_accuracy"];
  ASSERT_TRUE(val.is_number()) << val;
  // 20 validation images: the accuracy is a multiple of 1/20.
  EXPECT_NEAR(std::round(val.get<double>() * 20), val.get<double>() * 20, 1e-9);
}

TEST(TrainResume, SignalsWriteACheckpointAndExit75) {
  for (int sig : {SIGINT, SIGTERM}) {
    TempDir dir;
    const auto a = dir.path / "out-a", b = dir.path / "out-b";
    const std::string args =
        "--dataset teacher --batch-size 10 --epochs 3 --optimizer sgdm --no-progress --no-plot "
        "--threads 1 --save-models";
    ASSERT_EQ(run(args + " --out " + a.string(), dir).code, 0);
    const pid_t pid = spawn(args + " --out " + b.string(), dir);
    // Signal once the first epoch's metrics exist: the run is inside epoch 2.
    for (int i = 0; i < 600 && !fs::exists(b / "metrics.json"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ASSERT_TRUE(fs::exists(b / "metrics.json"));
    kill(pid, sig);
    const int status = wait_status(pid);
    ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping";
    EXPECT_EQ(WEXITSTATUS(status), 75);
    const auto err = sgdx::testing::read_bytes(dir.file("spawn.err"));
    const std::string msg(err.begin(), err.end());
    EXPECT_NE(msg.find(sig == SIGINT ? "interrupted by SIGINT" : "terminated by SIGTERM"), std::string::npos)
        << msg;
    ASSERT_TRUE(fs::exists(b / "checkpoint.pt"));
    auto r = run(args + " --resume " + b.string(), dir);
    ASSERT_EQ(r.code, 0) << r.err;
    expect_same_results(a, b);
  }
}

// SIGKILL at random moments of a run that writes a checkpoint after every step
// (most of its time): whatever is left must load, and the chain of resumed runs
// must end where the uninterrupted run ends. SGDX_KILL_ROUNDS sets the rounds.
TEST(TrainResume, KillDuringCheckpointWritesLeavesALoadableCheckpoint) {
  const int rounds =
      std::getenv("SGDX_KILL_ROUNDS") != nullptr ? std::atoi(std::getenv("SGDX_KILL_ROUNDS")) : 12;
  TempDir dir;
  const auto a = dir.path / "out-a", b = dir.path / "out-b";
  const std::string args =
      "--dataset teacher --train-subset 6000 --batch-size 20 --epochs 2 --optimizer sgdm "
      "--no-progress --no-plot --threads 1 --save-models --checkpoint-every 1";
  ASSERT_EQ(run(args + " --out " + a.string(), dir).code, 0);
  std::mt19937 rng(20261128);
  std::uniform_int_distribution<int> delay_ms(300, 1500);
  int loaded = 0, mid_write = 0;  // kills that left a checkpoint / a half-written one
  // A loaded machine can start the program late: kills that land before its first
  // checkpoint do not count, up to 4x the rounds in all.
  for (int round = 0; round < 4 * rounds && loaded < rounds; ++round) {
    const bool resume = fs::exists(b / "checkpoint.pt");
    const pid_t pid = spawn(args + (resume ? " --resume " : " --out ") + b.string(), dir);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    kill(pid, SIGKILL);
    const int status = wait_status(pid);
    if (WIFEXITED(status)) {
      ASSERT_EQ(WEXITSTATUS(status), 0) << "round " << round;  // it finished before the kill:
      fs::remove_all(b);  // a fast machine; start the chain again for more kills
      continue;
    }
    if (!fs::exists(b)) continue;  // killed before it made its output directory (a loaded machine)
    for (const auto& entry : fs::directory_iterator(b))
      mid_write += entry.path().filename().string().rfind("checkpoint.pt.tmp.", 0) == 0 ? 1 : 0;
    if (!fs::exists(b / "checkpoint.pt")) continue;  // killed before its first checkpoint
    // The checkpoint loads completely: model, optimizer state and the run's own state.
    auto model = sgdx::models::make_model("mlp", {100}, 10);
    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
    EXPECT_NO_THROW(sgdx::load_checkpoint((b / "checkpoint.pt").string(), *model, &opt,
                                          [](torch::serialize::InputArchive& x) {
                                            c10::IValue v;
                                            x.read("header/format", v);
                                            x.read("run/ints", v);
                                          }))
        << "round " << round;
    ++loaded;
  }
  EXPECT_GE(loaded, std::min(rounds, 3)) << "too few kills landed after a first checkpoint";
  EXPECT_GE(mid_write, std::min(rounds, 1)) << "no kill landed during a checkpoint write";
  auto r = run(args + (fs::exists(b / "checkpoint.pt") ? " --resume " : " --out ") + b.string(), dir);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_same_results(a, b);
}

TEST(TrainResume, AnotherRunsCheckpointIsRefusedBeforeAnythingChanges) {
  TempDir dir;
  const auto b = dir.path / "out";
  const std::string common = "--dataset teacher --batch-size 40 --no-progress --no-plot --threads 1";
  const std::string args = common + " --train-subset 200 --epochs 2 --compare sgd,adam";
  ASSERT_EQ(run(args + " --out " + b.string() + " --stop-after 7", dir).code, 75);
  const auto checkpoint = bytes(b / "checkpoint.pt");
  const auto json = bytes(b / "metrics.json");
  struct Case {
    std::string args, needle;
  };
  for (const auto& c :
       std::vector<Case>{{args + " --lr 0.5", "lr"},
                         {common + " --train-subset 200 --epochs 2 --compare sgd,sgdm", "optimizers"},
                         {common + " --train-subset 200 --epochs 3 --compare sgd,adam",
                          "epochs: 2 (checkpoint) vs 3 (now)"},
                         {common + " --train-subset 300 --epochs 2 --compare sgd,adam", "train_examples"},
                         {args + " --model cnn", "model"}}) {
    auto r = run(c.args + " --resume " + b.string(), dir);
    EXPECT_EQ(r.code, 1) << c.args;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find("is from a different run"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
    EXPECT_TRUE(bytes(b / "checkpoint.pt") == checkpoint) << c.args;
    EXPECT_TRUE(bytes(b / "metrics.json") == json) << c.args;
  }
  // A fresh run into the directory would overwrite the checkpoint: refused too.
  auto fresh = run(args + " --out " + b.string(), dir);
  EXPECT_EQ(fresh.code, 1);
  EXPECT_NE(fresh.err.find("--resume " + b.string()), std::string::npos) << fresh.err;
  EXPECT_TRUE(bytes(b / "checkpoint.pt") == checkpoint);
  // Nothing to resume, and not a checkpoint at all.
  auto none = run(args + " --resume " + dir.file("nowhere"), dir);
  EXPECT_EQ(none.code, 1);
  EXPECT_NE(none.err.find("no checkpoint"), std::string::npos) << none.err;
  { std::ofstream(b / "checkpoint.pt") << "not a checkpoint"; }
  auto junk = run(args + " --resume " + b.string(), dir);
  EXPECT_EQ(junk.code, 1);
  EXPECT_EQ(std::count(junk.err.begin(), junk.err.end(), '\n'), 1) << junk.err;
  EXPECT_NE(junk.err.find("is not a readable sgdx-train checkpoint"), std::string::npos) << junk.err;
}

TEST(TrainResume, DivergenceKeepsTheFinishedRunsAndEpochs) {
  // adam at lr 50 stays finite; sgd at lr 50 diverges in its second epoch (step 16).
  TempDir dir;
  const auto out = dir.path / "out";
  auto r = run(
      "--dataset teacher --train-subset 400 --batch-size 40 --epochs 3 --no-progress --no-plot --threads 1 "
      "--compare adam,sgd --lr 50 --out " +
          out.string(),
      dir);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("training diverged"), std::string::npos) << r.err;
  const auto j = metrics(out);
  ASSERT_EQ(j["runs"].size(), 2u);
  EXPECT_EQ(j["runs"][0]["epochs"].size(), 3u);
  EXPECT_FALSE(j["runs"][0].contains("status"));
  EXPECT_GE(j["runs"][1]["epochs"].size(), 1u);
  EXPECT_NE(j["runs"][1]["status"].get<std::string>().find("diverged at step"), std::string::npos);
  std::ifstream summary(out / "summary.md");
  const std::string text((std::istreambuf_iterator<char>(summary)), {});
  EXPECT_NE(text.find("| adam |"), std::string::npos) << text;
  EXPECT_NE(text.find("sgd seed 0: diverged at step"), std::string::npos) << text;
  for (const auto& entry : fs::directory_iterator(out))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

// sgdx-train across processes as a user meets it: ranks started the way torchrun
// starts them (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) train what one process
// trains on the same global batch, rank 0 alone prints and writes, a stopped run
// resumes with any world size, and every fault (a killed rank, ranks of different
// worlds, no master) ends in a clear error within the timeout, the last checkpoint
// still loadable. Each launch takes a free port on 127.0.0.1; the binary runs
// serially under ctest (RUN_SERIAL).
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "dist/dist_harness.h"
#include "sgdx/checkpoint.h"
#include "sgdx/models/models.h"
#include "test_util.h"

using sgdx::testing::TempDir;

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// 5 steps of 40 per epoch, 2 epochs, one thread per rank.
const std::string kCommon =
    "--dataset teacher --batch-size 40 --epochs 2 --no-progress --no-plot --threads 1 --save-models";
const std::string kBase = kCommon + " --train-subset 200";

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct RankResult {
  int code = -1;  // -1: killed at the deadline
  std::string out, err;
  double seconds = 0;
};

// Ranks of sgdx-train started as torchrun starts them; rank r runs `args(r)` with
// `env(r)` added. The default environment is one world of `world` on a free port.
class Launch {
 public:
  Launch(int world, const TempDir& dir, const std::function<std::string(int)>& args,
         const std::function<std::string(int)>& env = nullptr)
      : dir_(dir), port_(sgdx::testing::free_port()), pids_(world, -1), results_(world) {
    start_ = Clock::now();
    for (int r = 0; r < world; ++r) {
      const std::string vars = "MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port_) +
                               " RANK=" + std::to_string(r) + " WORLD_SIZE=" + std::to_string(world) +
                               " SGDX_RUN_ID=test-" + std::to_string(port_) +
                               " SGDX_DIST_TIMEOUT_S=20 OMP_NUM_THREADS=1 " + (env ? env(r) : "");
      const std::string cmd =
          vars + " exec " + SGDX_TRAIN_EXE + " " + args(r) + " >" + file(r, "out") + " 2>" + file(r, "err");
      const char* argv[] = {"/bin/sh", "-c", cmd.c_str(), nullptr};
      EXPECT_EQ(posix_spawn(&pids_[r], "/bin/sh", nullptr, nullptr, const_cast<char* const*>(argv), environ),
                0);
    }
  }
  ~Launch() { wait(std::chrono::seconds(1)); }

  int port() const { return port_; }
  pid_t pid(int r) const { return pids_[r]; }
  bool running(int r) {
    reap(r, WNOHANG);
    return pids_[r] > 0;
  }

  // Waits for every rank up to `deadline` (then SIGKILL); each rank's exit code and output.
  const std::vector<RankResult>& wait(std::chrono::seconds deadline = std::chrono::seconds(240)) {
    const auto end = Clock::now() + deadline;
    for (bool any = true; any && Clock::now() < end;) {
      any = false;
      for (size_t r = 0; r < pids_.size(); ++r) any = running(static_cast<int>(r)) || any;
      if (any) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    for (size_t r = 0; r < pids_.size(); ++r) {
      if (pids_[r] > 0) {
        ::kill(pids_[r], SIGKILL);
        reap(static_cast<int>(r), 0);
        results_[r].code = -1;
      }
      results_[r].out = slurp(file(static_cast<int>(r), "out"));
      results_[r].err = slurp(file(static_cast<int>(r), "err"));
    }
    return results_;
  }

 private:
  std::string file(int r, const std::string& what) const {
    return dir_.file("rank" + std::to_string(r) + "-" + std::to_string(port_) + "." + what);
  }
  void reap(int r, int flags) {
    if (pids_[r] <= 0) return;
    int status = 0;
    if (::waitpid(pids_[r], &status, flags) != pids_[r]) return;
    results_[r].code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    results_[r].seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    pids_[r] = 0;
  }

  const TempDir& dir_;
  int port_;
  std::vector<pid_t> pids_;
  std::vector<RankResult> results_;
  Clock::time_point start_;
};

std::string describe(const std::vector<RankResult>& rs) {
  std::string s;
  for (size_t r = 0; r < rs.size(); ++r)
    s += "rank " + std::to_string(r) + " exit " + std::to_string(rs[r].code) + " after " +
         std::to_string(rs[r].seconds) + " s\n--- stdout\n" + rs[r].out + "--- stderr\n" + rs[r].err + "\n";
  return s;
}

nlohmann::json metrics(const fs::path& dir) {
  std::ifstream in(dir / "metrics.json");
  return nlohmann::json::parse(in);
}

// The final parameters of a saved model of the run whose metrics.json config is `config`
// (the teacher problem: 100 inputs; cifar10: 3x32x32 images; 10 classes).
std::vector<torch::Tensor> parameters(const fs::path& file, const nlohmann::json& config) {
  const auto shape =
      config["dataset"] == "cifar10" ? std::vector<int64_t>{3, 32, 32} : std::vector<int64_t>{100};
  auto model = sgdx::models::make_model(config["model"].get<std::string>(), shape, 10);
  sgdx::load_checkpoint(file.string(), *model);
  std::vector<torch::Tensor> out;
  for (const auto& p : model->parameters()) out.push_back(p.detach().clone());
  return out;
}

// 2-rank results against 1-process results: per-epoch metrics within a relative
// `tol`, test accuracy within one test example in a hundred, every saved model's
// parameters within `tol` of the largest parameter.
void expect_close_runs(const fs::path& one, const fs::path& two, double tol) {
  const auto a = metrics(one), b = metrics(two);
  ASSERT_EQ(a["runs"].size(), b["runs"].size());
  EXPECT_EQ(b["config"]["world_size"], 2);
  for (size_t i = 0; i < a["runs"].size(); ++i) {
    const auto &ra = a["runs"][i], &rb = b["runs"][i];
    ASSERT_EQ(ra["epochs"].size(), rb["epochs"].size()) << ra["optimizer"];
    for (size_t e = 0; e < ra["epochs"].size(); ++e) {
      const auto &ea = ra["epochs"][e], &eb = rb["epochs"][e];
      EXPECT_EQ(ea["steps"], eb["steps"]);
      for (const char* key : {"train_loss", "test_loss", "grad_norm_mean"}) {
        const double x = ea[key], y = eb[key];
        EXPECT_NEAR(x, y, tol * std::max(1.0, std::abs(x)))
            << ra["optimizer"] << " epoch " << e + 1 << " " << key;
      }
      EXPECT_NEAR(ea["test_accuracy"].get<double>(), eb["test_accuracy"].get<double>(), 0.01)
          << ra["optimizer"] << " epoch " << e + 1;
    }
  }
  size_t models = 0;
  for (const auto& entry : fs::directory_iterator(one / "models")) {
    ++models;
    const auto pa = parameters(entry.path(), a["config"]),
               pb = parameters(two / "models" / entry.path().filename(), a["config"]);
    double scale = 0, diff = 0;
    for (size_t k = 0; k < pa.size(); ++k) {
      scale = std::max(scale, pa[k].abs().max().item<double>());
      diff = std::max(diff, (pa[k] - pb[k]).abs().max().item<double>());
    }
    EXPECT_LE(diff, tol * scale) << entry.path().filename() << ": largest difference " << diff;
    std::printf("%s: 1 vs 2 ranks, largest parameter difference %.3g (largest parameter %.3g)\n",
                entry.path().filename().c_str(), diff, scale);
  }
  EXPECT_GT(models, 0u);
}

// Trains `args` in one process into <dir>/one and as 2 ranks into <dir>/two (rank 1
// is told to write into <dir>/rank1-out, which must stay absent: rank 0 alone writes).
void expect_two_ranks_like_one(const std::string& args, double tol) {
  TempDir dir;
  const auto one = dir.path / "one", two = dir.path / "two", other = dir.path / "rank1-out";
  const auto single = sgdx::testing::run_program(SGDX_TRAIN_EXE, args + " --out " + one.string(), dir);
  ASSERT_EQ(single.code, 0) << single.err;
  Launch launch(2, dir, [&](int r) { return args + " --out " + (r == 0 ? two : other).string(); });
  const auto& rs = launch.wait();
  ASSERT_EQ(rs[0].code, 0) << describe(rs);
  ASSERT_EQ(rs[1].code, 0) << describe(rs);
  EXPECT_EQ(rs[1].out, "") << "only rank 0 prints";
  EXPECT_EQ(rs[1].err, "") << "only rank 0 prints";
  EXPECT_FALSE(fs::exists(other)) << "only rank 0 writes";
  EXPECT_NE(rs[0].out.find("2 processes (20 examples each per batch)"), std::string::npos) << rs[0].out;
  for (const char* f : {"metrics.csv", "metrics.json", "summary.md"}) EXPECT_TRUE(fs::exists(two / f)) << f;
  EXPECT_FALSE(fs::exists(two / "checkpoint.pt"));
  expect_close_runs(one, two, tol);
}

}  // namespace

TEST(TrainDist, EveryOptimizerTrainsLikeOneProcess) {
  // Adam divides by the root of its second moment: the rounding of the shares shows most there.
  expect_two_ranks_like_one(kBase + " --compare sgd,sgdm,nesterov,adam,rsgd,svrg,gqsgdm", 1e-5);
  // The clustered step clusters the global batch (the ranks' features gathered),
  // with the per-sample capture and with one backward per cluster.
  expect_two_ranks_like_one(kBase + " --compare gqsgdm-k2,gqsgdm-k3", 1e-5);
  expect_two_ranks_like_one(kBase + " --compare gqsgdm-k2 --gq-path reference", 1e-5);
}

TEST(TrainDist, EverySamplingModeTrainsLikeOneProcess) {
  expect_two_ranks_like_one(
      kBase +
          " --compare sgdm+loss,sgdm+upper-bound,sgdm+exact,sgdm@ts:2,sgdm@scalarize:2,sgdm@cooldown:2 "
          "--schedule "
          "cosine --imbalance 5",
      1e-6);
}

TEST(TrainDist, PresamplingLossScalingAndAnUnevenLastBatchTrainLikeOneProcess) {
  expect_two_ranks_like_one(kBase + " --compare sgdm+upper-bound --presample 3", 1e-6);
  expect_two_ranks_like_one(kCommon + " --compare sgd,svrg --train-subset 205",
                            1e-6);  // last batch: 5 = 3 + 2
  // Adam's normalised step amplifies fp16's rounding of the shares' forward: sgdm only.
  expect_two_ranks_like_one(kBase + " --compare sgdm --amp fp16", 1e-3);
}

TEST(TrainDist, AugmentedCifarWithAValidationSplitTrainsLikeOneProcess) {
  // Each rank crops and flips its share with the rows' draws of the global batch.
  TempDir data;
  const std::string cifar = "--dataset cifar10 --data-dir " +
                            sgdx::testing::write_tiny_cifar10(data.path / "cifar", 48, 10) +
                            " --validation 40 --batch-size 40 --epochs 2 --no-progress --no-plot --threads 1 "
                            "--save-models --augment";
  expect_two_ranks_like_one(cifar + " --compare sgdm,sgdm+loss", 1e-5);
  expect_two_ranks_like_one(cifar + " --compare sgdm+upper-bound --presample 2", 1e-5);
}

TEST(TrainDist, StoppedRunResumesWithAnyWorldSize) {
  TempDir dir;
  const auto full = dir.path / "full", b = dir.path / "b", c = dir.path / "c";
  const std::string args = kBase + " --compare sgdm+loss,adam";
  {
    Launch uninterrupted(2, dir, [&](int) { return args + " --out " + full.string(); });
    const auto& rs = uninterrupted.wait();
    ASSERT_EQ(rs[0].code, 0) << describe(rs);
  }
  // Two ranks stop after 7 steps (exit 75); rank 0 wrote the checkpoint.
  {
    Launch first(2, dir, [&](int) { return args + " --out " + b.string() + " --stop-after 7"; });
    const auto& rs = first.wait();
    ASSERT_EQ(rs[0].code, 75) << describe(rs);
    ASSERT_EQ(rs[1].code, 75) << describe(rs);
    EXPECT_NE(rs[0].err.find("--resume " + b.string()), std::string::npos) << rs[0].err;
    EXPECT_EQ(rs[1].err, "");
    ASSERT_TRUE(fs::exists(b / "checkpoint.pt"));
  }
  fs::copy(b, c, fs::copy_options::recursive);
  // The same world continues bit-identically. Rank 1 names a directory that does not
  // exist (as on another machine): it loads rank 0's checkpoint, sent to it.
  {
    Launch second(2, dir,
                  [&](int r) { return args + " --resume " + (r == 0 ? b : dir.path / "absent").string(); });
    const auto& rs = second.wait();
    ASSERT_EQ(rs[0].code, 0) << describe(rs);
    ASSERT_EQ(rs[1].code, 0) << describe(rs);
    EXPECT_FALSE(fs::exists(dir.path / "absent"));
    auto ma = metrics(full), mb = metrics(b);
    for (auto* m : {&ma, &mb})
      for (auto& r : (*m)["runs"])
        for (auto& e : r["epochs"]) e.erase("seconds");
    EXPECT_EQ(ma, mb);
  }
  // One process continues the 2-rank checkpoint: a note, and the same run within rounding.
  {
    const auto r = sgdx::testing::run_program(SGDX_TRAIN_EXE, args + " --resume " + c.string(), dir);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.err.find("resuming with 1 process(es) where the checkpoint was written by 2"),
              std::string::npos)
        << r.err;
    const auto ma = metrics(full), mc = metrics(c);
    for (size_t i = 0; i < ma["runs"].size(); ++i) {
      const double x = ma["runs"][i]["epochs"][1]["train_loss"], y = mc["runs"][i]["epochs"][1]["train_loss"];
      EXPECT_NEAR(x, y, 1e-4 * std::abs(x));
    }
  }
}

TEST(TrainDist, RefusalsNameTheProblemOnEveryRank) {
  TempDir dir;
  struct Case {
    std::function<std::string(int)> args;
    std::string needle;
  };
  const auto out = " --out " + dir.file("out");
  const std::string small = "--dataset teacher --train-subset 200 --epochs 2 --no-progress --threads 1";
  const std::vector<Case> cases = {
      {[&](int) { return small + " --batch-size 41" + out; },
       "--batch-size 41 is the global batch and must divide by the 2 processes"},
      {[&](int r) { return kBase + (r == 1 ? " --lr 0.05" : "") + out; },
       "rank 1's options or data differ from rank 0's"},
  };
  for (const auto& c : cases) {
    Launch launch(2, dir, c.args);
    const auto& rs = launch.wait(std::chrono::seconds(60));
    for (int r = 0; r < 2; ++r) {
      EXPECT_NE(rs[r].code, 0) << describe(rs);
      EXPECT_LE(std::count(rs[r].err.begin(), rs[r].err.end(), '\n'), 1) << describe(rs);
    }
    EXPECT_NE((rs[0].err + rs[1].err).find(c.needle), std::string::npos) << describe(rs);
    EXPECT_FALSE(fs::exists(dir.path / "out")) << "output written despite the refusal";
  }
}

// A rank killed mid-run: the other exits non-zero within the timeout naming it, and the
// last checkpoint (rank 0's, written every 2 steps) continues in one process.
TEST(TrainDist, KilledRankIsNamedAndTheLastCheckpointLoads) {
  TempDir dir;
  const auto b = dir.path / "b";
  const std::string args =
      "--dataset teacher --train-subset 2000 --batch-size 20 --epochs 200 --no-progress "
      "--no-plot --threads 1 --checkpoint-every 2 --optimizer sgdm";
  Launch launch(
      2, dir, [&](int) { return args + " --out " + b.string(); },
      [](int) { return std::string("SGDX_DIST_TIMEOUT_S=10"); });
  const auto until = Clock::now() + std::chrono::seconds(120);
  while (!fs::exists(b / "checkpoint.pt") && Clock::now() < until && launch.running(0))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(fs::exists(b / "checkpoint.pt")) << describe(launch.wait(std::chrono::seconds(1)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(launch.running(1));
  const auto killed = Clock::now();
  ::kill(launch.pid(1), SIGKILL);
  const auto& rs = launch.wait(std::chrono::seconds(90));
  const double seconds = std::chrono::duration<double>(Clock::now() - killed).count();
  EXPECT_NE(rs[0].code, 0) << describe(rs);
  EXPECT_NE(rs[0].code, -1) << "rank 0 hung: " << describe(rs);
  EXPECT_LT(seconds, 60) << describe(rs);
  EXPECT_NE(rs[0].err.find("rank 0: error:"), std::string::npos) << rs[0].err;
  EXPECT_TRUE(rs[0].err.find("rank 1") != std::string::npos ||
              rs[0].err.find("rank(s) 1") != std::string::npos)
      << rs[0].err;
  std::printf("rank 0 reported the killed rank after %.1f s: %s", seconds, rs[0].err.c_str());
  for (const auto& entry : fs::directory_iterator(b))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  const auto r =
      sgdx::testing::run_program(SGDX_TRAIN_EXE, args + " --resume " + b.string() + " --stop-after 3", dir);
  EXPECT_EQ(r.code, 75) << r.err;
}

TEST(TrainDist, RanksOfDifferentWorldSizesAreRefused) {
  TempDir dir;
  Launch launch(
      2, dir, [&](int) { return kBase + " --out " + dir.file("out"); },
      [](int r) { return std::string("SGDX_DIST_TIMEOUT_S=10") + (r == 1 ? " WORLD_SIZE=3" : ""); });
  const auto& rs = launch.wait(std::chrono::seconds(90));
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(rs[r].code, 0) << describe(rs);
    EXPECT_NE(rs[r].code, -1) << "rank " << r << " hung: " << describe(rs);
    EXPECT_LT(rs[r].seconds, 60) << describe(rs);
  }
  EXPECT_NE(rs[0].err.find("WORLD_SIZE"), std::string::npos) << describe(rs);
  EXPECT_FALSE(fs::exists(dir.path / "out"));
}

TEST(TrainDist, UnreachableMasterFailsWithinTheTimeout) {
  TempDir dir;
  const int port = sgdx::testing::free_port();  // nothing listens there
  const auto start = Clock::now();
  const auto r = sgdx::testing::run_program(
      "MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
          " RANK=1 WORLD_SIZE=2 SGDX_DIST_TIMEOUT_S=3 OMP_NUM_THREADS=1 " SGDX_TRAIN_EXE,
      kBase + " --out " + dir.file("out"), dir);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_NE(r.code, 0);
  EXPECT_LT(seconds, 30);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("rank 1: error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("127.0.0.1"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.path / "out"));
}

// The README's command: torchrun starts the ranks.
TEST(TrainDist, TorchrunStartsTheRanks) {
  const std::string torchrun = SGDX_TORCHRUN;
  if (torchrun.empty())
    GTEST_SKIP() << "no torchrun next to the Python that provides LibTorch (SGDX_TORCHRUN)";
  TempDir dir;
  const auto out = dir.path / "out";
  const auto r = sgdx::testing::run_program(
      "OMP_NUM_THREADS=1 " + torchrun + " --standalone --nproc-per-node 2 --no-python " SGDX_TRAIN_EXE,
      kBase + " --compare sgd,sgdm+loss --out " + out.string(), dir);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("2 processes"), std::string::npos) << r.out;
  EXPECT_EQ(metrics(out)["config"]["world_size"], 2);
}

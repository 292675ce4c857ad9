// The runs of one invocation, one after another over (spec, seed) pairs, and the
// result files they leave.
#include <fmt/core.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include "invocation.h"

namespace sgdx_train {
namespace {

class RunSeries {
 public:
  RunSeries(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
            const nlohmann::json& config, StartPoint start)
      : inv_(inv),
        o_(o),
        data_(data),
        config_(config),
        runs_(std::move(start.finished)),
        first_run_(start.first_run),
        csv_(inv.out_dir + "/metrics.csv"),
        json_(inv.out_dir + "/metrics.json"),
        steps_left_(o.stop_after) {}

  int train() {
    install_stop_signals();
    try {
      const int64_t runs = static_cast<int64_t>(inv_.specs.size()) * o_.seeds;
      for (int64_t r = first_run_; r < runs; ++r) train_run(r);
    } catch (const Stopped& stopped) {
      if (root()) {
        std::fprintf(
            stderr, "sgdx-train: %s: checkpoint %s written; continue with the same options and --resume %s\n",
            stopped.what(), inv_.checkpoint.c_str(), inv_.out_dir.c_str());
      }
      return kExitStopped;
    } catch (const Diverged& diverged) {
      // The finished runs and epochs stay in the metrics; the summary says what finished.
      if (current_) current_->status = fmt::format("diverged at step {}", diverged.step());
      write_metrics();
      write_summary(all_runs());
      throw SharedError(
          diverged.what());  // every rank diverged at this step (the loss is global); main reports it
    }
    finish();
    return 0;
  }

 private:
  void train_run(int64_t r) {
    const auto& spec = inv_.specs[static_cast<size_t>(r / o_.seeds)];
    const int64_t run_seed = o_.seed + r % o_.seeds;
    current_ = RunResult{spec.label, run_seed, {}, {}};
    const auto hooks = run_hooks(spec, r, run_seed);
    runs_.push_back(train_one(data_, spec, run_seed, o_.cfg, inv_.device, hooks));
    current_.reset();
    write_metrics();
  }

  RunHooks run_hooks(const RunSpec& spec, int64_t r, int64_t run_seed) {
    RunHooks hooks;
    hooks.epoch_done = [this](const RunResult& partial) {
      current_ = partial;
      write_metrics();
    };
    hooks.checkpoint_path = inv_.checkpoint;
    hooks.checkpoint_every = o_.checkpoint_every;
    hooks.steps_left = o_.stop_after > 0 ? &steps_left_ : nullptr;
    hooks.write_header = [this, r](torch::serialize::OutputArchive& a) {
      write_header(a, CheckpointHeader{config_, runs_, r});
    };
    hooks.resume = inv_.resumed.has_value() && r == first_run_;
    hooks.world = inv_.world;
    hooks.resume_path = inv_.resume_from;
    if (o_.save_models && root()) {
      hooks.model_path =
          (std::filesystem::path(inv_.out_dir) / "models" / fmt::format("{}-seed{}.pt", spec.label, run_seed))
              .string();
      std::filesystem::create_directories(std::filesystem::path(hooks.model_path).parent_path());
    }
    return hooks;
  }

  // The finished runs and the run in progress.
  std::vector<RunResult> all_runs() const {
    auto all = runs_;
    if (current_) all.push_back(*current_);
    return all;
  }

  // Rank 0 alone prints and writes; every rank keeps the same results.
  bool root() const { return inv_.world.root(); }

  // Rewritten after every epoch.
  void write_metrics() const {
    if (!root()) return;
    const auto all = all_runs();
    write_atomically(csv_, metrics_csv(all));
    write_atomically(json_, metrics_json(config_, all).dump(2));
  }

  std::string write_summary(const std::vector<RunResult>& runs) const {
    if (!root()) return {};
    auto table = summary_table(runs, test_set_note(data_));
    write_atomically(inv_.out_dir + "/summary.md", table);
    return table;
  }

  // Every run is complete: the metrics are final and the checkpoint goes.
  void finish() const {
    if (!root()) return;
    std::error_code ec;
    std::filesystem::remove(inv_.checkpoint, ec);
    const auto table = write_summary(runs_);
    fmt::print("\n{}\n", table);
    fmt::print("metrics: {} and {}\n", csv_, json_);
    if (o_.no_plot) return;
    std::string why;
    const std::string png = inv_.out_dir + "/training.png";
    const auto& cfg = o_.cfg;
    const auto note = test_set_note(data_);
    const auto title = fmt::format("{} / {} (batch {}, mean of {} seed(s)){}", cfg.dataset, cfg.model,
                                   cfg.batch_size, o_.seeds, note.empty() ? "" : "; " + note);
    if (plot_runs(runs_, png, title, why)) {
      fmt::print("plot: {}\n", png);
    } else {
      std::fprintf(stderr, "sgdx-train: warning: no plot: %s\n", why.c_str());
    }
  }

  const Invocation& inv_;
  const CliOptions& o_;
  const sgdx::data::DatasetSplits& data_;
  const nlohmann::json& config_;
  std::vector<RunResult> runs_;  // finished
  std::optional<RunResult> current_;
  const int64_t first_run_;
  const std::string csv_, json_;
  int64_t steps_left_;  // --stop-after: steps this process may still train
};

}  // namespace

int train_runs(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
               const nlohmann::json& config, StartPoint start) {
  return RunSeries(inv, o, data, config, std::move(start)).train();
}

}  // namespace sgdx_train

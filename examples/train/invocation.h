#pragma once
// One invocation of sgdx-train in the order it runs: the command line resolved into
// runs, device and output directory (every check before any data is read or file
// written), the data, the config that a checkpoint must match, where to start, then
// the runs and their result files. A refusal is thrown (std::exception or
// c10::Error) and main prints it as one line.
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "resume.h"
#include "sgdx/data/tensor_dataset.h"
#include "trainer.h"

namespace sgdx_train {

struct Invocation {
  std::vector<std::string> optimizers;  ///< --compare's items (or --optimizer) as given
  std::vector<RunSpec> specs;
  torch::Device device{torch::kCPU};
  std::string out_dir, checkpoint;
  std::optional<CheckpointHeader> resumed;  ///< --resume: the checkpoint's header
};

/// The checks that need several options, the run specifications, the thread count and the
/// device; sets `o.cfg`'s lr and progress from the command line.
Invocation resolve_invocation(const CLI::App& app, CliOptions& o);

/// The dataset, made long-tailed by --imbalance.
sgdx::data::DatasetSplits load_training_data(const TrainConfig& cfg);

/// What a resumed run must repeat: the settings, learning rates and data fingerprints.
nlohmann::json run_config(const CliOptions& o, const Invocation& inv, const sgdx::data::DatasetSplits& data);

/// The runs already finished and the next one, over (spec, seed) pairs.
struct StartPoint {
  std::vector<RunResult> finished;
  int64_t first_run = 0;
};

/// Zero for a fresh invocation; a resumed one continues only the run that wrote the checkpoint.
StartPoint start_point(const Invocation& inv, const nlohmann::json& config, int seeds);

/// Creates the output directory and prints what is about to be trained.
void announce(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
              const nlohmann::json& config, const StartPoint& start);

/// Trains the runs from `start` on and writes the result files; returns the exit status.
int train_runs(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
               const nlohmann::json& config, StartPoint start);

}  // namespace sgdx_train

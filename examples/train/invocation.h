#pragma once
// One invocation of sgdx-train in the order it runs: the command line resolved into
// runs, device and output directory (every check before any data is read or file
// written), the data, the config that a checkpoint must match, where to start, then
// the runs and their result files. A refusal is thrown (std::exception or
// c10::Error) and main prints it as one line.
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "resume.h"
#include "sgdx/data/tensor_dataset.h"
#include "trainer.h"
#include "world.h"

namespace sgdx_train {

struct Invocation {
  std::vector<std::string> optimizers;  ///< --compare's items (or --optimizer) as given
  std::vector<RunSpec> specs;
  torch::Device device{torch::kCPU};
  std::string out_dir, checkpoint;
  std::optional<CheckpointHeader> resumed;  ///< --resume: the checkpoint's header
  World world;                              ///< the ranks (one without torchrun)
  std::string resume_from;                  ///< --resume: the file to load (ranks > 0: rank 0's copy)
};

/// A file removed when the last owner lets go.
struct TempFile {
  std::string path;
  TempFile() = default;
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();
};

/// Across processes with --resume: rank 0 sends its checkpoint's bytes to every rank, which
/// keeps them in a temporary file (returned; null on rank 0, in one process or without
/// --resume), so the ranks of several machines need no shared filesystem. Every rank calls
/// it, with any arguments: rank 0 decides.
std::shared_ptr<TempFile> share_checkpoint(const World& world, const std::string& resume_dir);

/// The checks that need several options, the run specifications, the thread count and the
/// device; sets `o.cfg`'s lr and progress from the command line. Across processes
/// --batch-size is the global batch: it must divide by the world size.
/// `checkpoint_copy`: share_checkpoint's file (empty: the checkpoint itself).
Invocation resolve_invocation(const CLI::App& app, CliOptions& o, const World& world,
                              const std::string& checkpoint_copy = "");

/// The dataset with --validation examples held out, made long-tailed by --imbalance.
sgdx::data::DatasetSplits load_training_data(const TrainConfig& cfg);

/// What the test figures are measured on when the test split is not the dataset's whole
/// test set ("" otherwise): shared/data's CIFAR-10 holds only the first 1,000 test images.
std::string test_set_note(const sgdx::data::DatasetSplits& data);

/// What a resumed run must repeat: the settings, learning rates and data fingerprints.
nlohmann::json run_config(const CliOptions& o, const Invocation& inv, const sgdx::data::DatasetSplits& data);

/// Across processes: every rank's config (options and data fingerprints) must be rank 0's;
/// a rank that differs is refused by name on every rank.
void check_same_config(const World& world, const nlohmann::json& config);

/// The runs already finished and the next one, over (spec, seed) pairs.
struct StartPoint {
  std::vector<RunResult> finished;
  int64_t first_run = 0;
};

/// Zero for a fresh invocation; a resumed one continues only the run that wrote the checkpoint
/// (with any world size: every rank's state is one process's, see world.h).
StartPoint start_point(const Invocation& inv, const nlohmann::json& config, int seeds);

/// Creates the output directory and prints what is about to be trained (rank 0).
void announce(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
              const nlohmann::json& config, const StartPoint& start);

/// Trains the runs from `start` on and writes the result files; returns the exit status.
int train_runs(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
               const nlohmann::json& config, StartPoint start);

}  // namespace sgdx_train

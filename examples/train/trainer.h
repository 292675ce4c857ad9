#pragma once
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "report.h"
#include "sgdx/data/tensor_dataset.h"
#include "world.h"

namespace sgdx_train {

struct TrainConfig {
  std::string dataset = "fashion-mnist";
  std::string data_dir;
  std::string model = "mlp";
  std::string device = "auto";
  int64_t batch_size = 128;
  int epochs = 5;
  std::optional<double> lr;  ///< unset: each optimizer's default_lr
  double momentum = 0.9;
  double weight_decay = 0.0;
  std::string schedule = "constant";                                  ///< constant | cosine (per step, to 0)
  double rsgd_gamma = 0.999, rsgd_gamma0 = 1.0, rsgd_max_prob = 0.9;  // RSGDOptions' defaults
  std::string rsgd_granularity = "element", rsgd_memory = "accumulated";
  int64_t train_subset = 0;  ///< 0: all training examples
  bool augment = false;      ///< random crop (4-pixel zero padding) and horizontal flip of training images
  int64_t validation = 0;    ///< training examples held out for validation (fixed seed 0)
  bool progress = true;
  double imbalance = 0;                    ///< > 1: long-tailed training set with this ratio
  std::string balance = "none";            ///< none | ts | scalarize | cooldown
  double tau = 5.0;                        ///< temperature of ts / scalarize, tau_high of cooldown
  std::string sampling = "uniform";        ///< uniform | loss | upper-bound | exact
  int64_t presample = 0;                   ///< K&F presampling ratio (0: off)
  double mix = 0.1;                        ///< importance sampling: uniform mixing eps
  double score_beta = 0.0;                 ///< importance sampling: score smoothing
  int64_t clusters = 1;                    ///< GradQueue: k-means clusters per batch (1: plain variant)
  std::string gq_granularity = "element";  ///< GradQueue plain variant: element | tensor
  std::string gq_scope = "per-tensor";     ///< GradQueue clustered: per-tensor | global
  std::string gq_path = "fast";            ///< GradQueue clustered: fast | reference
  std::string gq_storage = "exact";        ///< GradQueue: exact | ema
  bool fused_cuda = false;   ///< on CUDA: sgdx's fused kernels (GradQueue step, k-means, per-sample norms)
  std::string amp = "none";  ///< none | bf16 | fp16 (autocast of forward and loss; fp16 with loss scaling)
};

/// One training configuration of a comparison: "optimizer[@balance[:tau]][+sampling]";
/// the optimizer "gqsgdm-kN" is GradQueue-SGDM with N clusters.
struct RunSpec {
  std::string label, optimizer, balance;
  double tau = 5.0;
  std::string sampling = "uniform";
  int64_t clusters = 1;
};

/// Parses a --compare item; balance and tau default to the config's.
RunSpec parse_run_spec(const std::string& item, const TrainConfig& cfg);

const std::vector<std::string>& optimizer_names();
double default_lr(const std::string& optimizer);

/// Builds a LibTorch or sgdx optimizer by name; invalid settings throw c10::Error.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        const std::vector<torch::Tensor>& params,
                                                        const TrainConfig& cfg);

/// Thrown when the loss is not finite; the step is the one that diverged.
class Diverged : public std::runtime_error {
 public:
  Diverged(const std::string& what, int64_t step) : std::runtime_error(what), step_(step) {}
  int64_t step() const { return step_; }

 private:
  int64_t step_;
};

/// What train_one reports to its caller and the checkpoints it writes.
struct RunHooks {
  /// After every epoch, with the run's metrics so far.
  std::function<void(const RunResult&)> epoch_done;
  /// Checkpoint file (empty: none); written every `checkpoint_every` steps (0: only
  /// when stopping), and when a SIGINT/SIGTERM or the step budget asks for a stop,
  /// after which train_one throws Stopped (resume.h).
  std::string checkpoint_path;
  int64_t checkpoint_every = 0;
  int64_t* steps_left = nullptr;  ///< steps this process may still train (nullptr: no limit)
  /// Writes the caller's part of a checkpoint (the header) into its archive.
  std::function<void(torch::serialize::OutputArchive&)> write_header;
  /// Restore the run before training, from `resume_path` (empty: `checkpoint_path`).
  bool resume = false;
  std::string resume_path;
  /// Where to write the final parameters (sgdx::save_checkpoint; empty: nowhere).
  std::string model_path;
  /// The ranks that train this run together (world.h); rank 0 alone writes the
  /// checkpoint, every rank loads it.
  World world;
};

/// Trains a fresh model (initialised from `seed`) with one optimizer and
/// evaluates on the test split after every epoch.
RunResult train_one(const sgdx::data::DatasetSplits& data, const RunSpec& spec, int64_t seed,
                    const TrainConfig& cfg, const torch::Device& device, const RunHooks& hooks = {});

}  // namespace sgdx_train

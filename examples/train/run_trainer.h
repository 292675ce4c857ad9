#pragma once
// The parts of one training run (train_one): its counters, the feed of its sampler
// and the RunTrainer that owns model, optimizer and sampler. Private to sgdx-train.
#include <fmt/core.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>

#include "resume.h"
#include "sgdx/amp/grad_scaler.h"
#include "sgdx/checkpoint.h"
#include "sgdx/data/augment.h"
#include "sgdx/data/importance.h"
#include "sgdx/data/temperature.h"
#include "sgdx/dist/data_parallel.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/cosine_lr.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"
#include "train_parts.h"
#include "trainer.h"

namespace sgdx_train::run_detail {

using Archive = torch::serialize::OutputArchive;
using InArchive = torch::serialize::InputArchive;

// Counters of a run that its metrics and schedules read.
struct RunCounters {
  int64_t step = 0, importance_steps = 0, amp_skipped = 0;
  double tau = 0;      // importance sampling: running tau of the scores
  double seconds = 0;  // training time of the finished epochs (wall clock)
};

// The epoch in progress: its number and partial sums. `started`: the sampler was
// reset for it (a resumed run continues inside it without a reset).
struct EpochSums {
  int epoch = 1;
  bool started = false;
  double loss_sum = 0, gn_sum = 0, gn_sq = 0, elapsed = 0;
  int64_t seen = 0, batch_index = 0, gn_count = 0;
};

// What feeds the epoch loop: a torch::data sampler driven as LibTorch's DataLoader
// drives it with workers(0) (reset at the epoch's start, next(batch) until it is
// exhausted, get_batch), which lets a resumed run continue inside an epoch where
// the DataLoader's begin() would reset the sampler.
//
// The sampler draws the global batch (the same on every rank); on_batch trains this
// rank's share of it and returns the batch's mean loss over every rank and its size.
struct Feed {
  torch::data::samplers::Sampler<>* sampler = nullptr;
  size_t batch_size = 0;
  std::function<std::pair<double, int64_t>(const std::vector<size_t>&)> on_batch;
  std::function<at::Tensor()> quality_probs;  // undefined: no quality metric
  std::function<void(Archive&)> save_extra = [](Archive&) {};
  std::function<void(InArchive&)> load_extra = [](InArchive&) {};
};

// One run: the model, its optimizer, the sampler of its mode and the counters that
// checkpoints save. Built in the order that draws the model's initial weights from
// `seed` first.
class RunTrainer {
 public:
  RunTrainer(const sgdx::data::DatasetSplits& data, const RunSpec& spec, int64_t seed, const TrainConfig& cfg,
             const torch::Device& device, const RunHooks& hooks);
  RunTrainer(const RunTrainer&) = delete;
  RunTrainer& operator=(const RunTrainer&) = delete;
  RunResult run();

 private:
  void configure_optimizer();
  void build_feed();
  void feed_presampled();
  void feed_importance();
  void feed_plain();
  torch::data::Example<> local_batch(const std::vector<size_t>& global);
  at::Tensor augmented(const at::Tensor& images, int64_t first_row) const;
  at::Tensor local_rows(const at::Tensor& global_rows) const;
  at::Tensor share_loss(const at::Tensor& loss) const;
  void average_gradients();
  at::Tensor full_gradient();
  double train_step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weights, at::Tensor* scores);
  at::Tensor backward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& logits,
                      const at::Tensor& features, at::Tensor loss, sgdx::ops::PerSampleGradients* cap);
  double finish_step(const at::Tensor& loss);
  void check_finite(double loss) const;
  void train_epoch();
  EpochMetrics epoch_metrics();
  void save(Archive& a);
  void load();
  void at_step_boundary();

  const sgdx::data::DatasetSplits& data_;
  const RunSpec& spec_;
  const int64_t seed_;
  const TrainConfig& cfg_;
  const torch::Device device_;
  const RunHooks& hooks_;
  const World world_;
  std::optional<sgdx::dist::DataParallel> data_parallel_;  // across processes only
  int64_t global_count_ = 0, local_count_ = 0;             // the batch in progress: all ranks', this rank's
  bool stop_agreed_ = false;  // across processes: some rank was asked to stop (agreed at the step's loss)
  sgdx::data::TensorDataset train_;
  int64_t n_, batches_, total_steps_;
  double base_lr_;
  std::shared_ptr<sgdx::models::Classifier> model_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::optional<sgdx::optim::CosineLR> schedule_;
  sgdx::optim::GradQueueSGDM* gq_ = nullptr;
  sgdx::optim::SVRG* svrg_ = nullptr;
  bool clustered_ = false;
  sgdx::ops::PerSampleOptions capture_options_;
  std::optional<sgdx::ops::PerSampleGradients> gq_capture_;
  std::vector<int64_t> train_counts_;
  at::Tensor class_weights_;  // scalarization: per-class loss weights w_k(tau)
  int64_t quality_m_;         // importance sampling: Q is measured on the first quality_m_ examples
  at::Tensor quality_x_, quality_y_;
  std::optional<at::ScalarType> amp_;
  sgdx::amp::GradScaler scaler_;
  RunResult result_;
  Progress progress_;
  RunCounters c_;
  EpochSums e_;
  double last_grad_sq_ = 0;  // squared gradient norm of the last step (inf/nan: a skipped fp16 step)
  Feed feed_;
  std::optional<torch::data::samplers::RandomSampler> random_sampler_;
  std::optional<sgdx::data::ImportanceSampler> importance_sampler_;
  std::optional<sgdx::data::TemperatureSampler> temperature_sampler_;
  std::optional<sgdx::data::Presampler> presampler_;
};

/// The counters and partial sums of a run in a checkpoint.
void save_state(Archive& a, const RunCounters& c, const EpochSums& e);
void load_state(InArchive& a, RunCounters& c, EpochSums& e);

}  // namespace sgdx_train::run_detail

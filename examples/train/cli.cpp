#include "cli.h"

#include <fmt/core.h>

#include <limits>

#include "../common/cli_checks.h"
#include "sgdx/data/tensor_dataset.h"
#include "sgdx/models/models.h"

namespace sgdx_train {

using sgdx_examples::finite_number;
using sgdx_examples::integer;
using sgdx_examples::output_directory;

namespace {

// The data and the model.
void add_data_options(CLI::App& app, TrainConfig& cfg) {
  app.add_option("--dataset", cfg.dataset,
                 "fashion-mnist (Debian package), mnist, cifar10 or teacher (synthetic)")
      ->check(CLI::IsMember(sgdx::data::dataset_names()))
      ->capture_default_str();
  app.add_option("--data-dir", cfg.data_dir,
                 "Directory with the dataset's files (default: Debian's for fashion-mnist, "
                 "$SGDX_DATA_DIR/<dataset> otherwise)");
  app.add_option("--model", cfg.model, "mlp, cnn or resnet")
      ->check(CLI::IsMember(sgdx::models::model_names()))
      ->capture_default_str();
}

// Augmentation and the validation split (their defaults depend on the dataset).
void add_augment_options(CLI::App& app, CliOptions& o) {
  auto* on = app.add_flag("--augment", o.augment,
                          "Random crop (4-pixel zero padding) and horizontal flip of every training batch, "
                          "drawn from the seed and the step (default for cifar10)");
  app.add_flag("--no-augment", o.no_augment, "No augmentation (default except for cifar10)")->excludes(on);
  app.add_option("--validation", o.validation,
                 "Training examples held out (fixed seed) and evaluated after every epoch beside the test "
                 "set (default: 5000 for cifar10, 0 otherwise)")
      ->check(integer(0));
}

// Which runs: optimizers, steps, seeds, device.
void add_run_options(CLI::App& app, CliOptions& o) {
  auto* opt_flag = app.add_option("--optimizer", o.optimizer,
                                  "sgd, sgdm, nesterov, adam, rsgd, svrg or gqsgdm (GradQueue-SGDM)")
                       ->check(CLI::IsMember(sgdx_train::optimizer_names()))
                       ->capture_default_str();
  app.add_option(
         "--compare", o.compare,
         "Comma-separated runs to train one after another and compare: optimizer[@balance[:tau]], "
         "e.g. sgd,sgdm,rsgd,adam or sgdm@ts:1,sgdm@ts:5,sgdm@cooldown:5,sgdm@scalarize:5; gqsgdm-kN is "
         "GradQueue-SGDM with N clusters, e.g. sgdm,gqsgdm,gqsgdm-k4")
      ->excludes(opt_flag);
  // (compare items: optimizer[@balance[:tau]][+sampling], e.g. sgdm+upper-bound)
  app.add_option("--lr", o.lr,
                 "Learning rate (default per optimizer: sgd 0.1, sgdm/nesterov/rsgd/gqsgdm 0.01, adam 0.001)")
      ->check(finite_number(0));
  app.add_option("--batch-size", o.cfg.batch_size,
                 "Minibatch size; across processes (torchrun) the global batch, split evenly over the ranks "
                 "(it must divide by WORLD_SIZE)")
      ->check(integer(1))
      ->capture_default_str();
  app.add_option("--epochs", o.cfg.epochs, "Training epochs")
      ->check(integer(1, std::numeric_limits<int>::max()))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "First seed (model init, data order, R-SGD draws)")
      ->check(integer(0))
      ->capture_default_str();
  app.add_option("--seeds", o.seeds, "Number of seeds per optimizer (seed, seed+1, ...)")
      ->check(integer(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--device", o.cfg.device,
                 "auto (cuda when available; the CPU across processes), cpu or cuda (one process only)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
}

// Settings every optimizer shares.
void add_optimizer_options(CLI::App& app, TrainConfig& cfg) {
  app.add_option("--momentum", cfg.momentum, "Momentum of sgdm, nesterov and gqsgdm")
      ->check(finite_number())
      ->capture_default_str();
  app.add_option("--weight-decay", cfg.weight_decay, "L2 weight decay for every optimizer")
      ->check(finite_number(0))
      ->capture_default_str();
  app.add_option("--schedule", cfg.schedule, "Learning-rate schedule: constant or cosine (per step, to 0)")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
}

// R-SGD.
void add_rsgd_options(CLI::App& app, TrainConfig& cfg) {
  app.add_option("--rsgd-gamma", cfg.rsgd_gamma,
                 "R-SGD: per-step decay of the non-reinforcement probability, in (0, 1)")
      ->check(finite_number())
      ->capture_default_str();
  app.add_option("--rsgd-gamma0", cfg.rsgd_gamma0, "R-SGD: scale gamma0 in [0, 1]")
      ->check(finite_number())
      ->capture_default_str();
  app.add_option("--rsgd-max-prob", cfg.rsgd_max_prob,
                 "R-SGD: cap on the reinforcement probability, in [0, 1]")
      ->check(finite_number())
      ->capture_default_str();
  app.add_option("--rsgd-granularity", cfg.rsgd_granularity, "R-SGD: element or tensor")
      ->capture_default_str();
  app.add_option("--rsgd-memory", cfg.rsgd_memory, "R-SGD: accumulated or previous")->capture_default_str();
}

// GradQueue-SGDM.
void add_gradqueue_options(CLI::App& app, TrainConfig& cfg) {
  app.add_option("--clusters", cfg.clusters,
                 "GradQueue: k-means clusters per batch on the last Linear's inputs (1: plain variant)")
      ->check(integer(1, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--gq-granularity", cfg.gq_granularity,
                 "GradQueue plain variant: element or tensor scarcity")
      ->check(CLI::IsMember({"element", "tensor"}))
      ->capture_default_str();
  app.add_option("--gq-scope", cfg.gq_scope, "GradQueue clustered: per-tensor or global cluster weights")
      ->check(CLI::IsMember({"per-tensor", "global"}))
      ->capture_default_str();
  app.add_option("--gq-path", cfg.gq_path,
                 "GradQueue clustered: fast (per-sample capture) or reference (one backward per cluster)")
      ->check(CLI::IsMember({"fast", "reference"}))
      ->capture_default_str();
  app.add_option("--gq-storage", cfg.gq_storage,
                 "GradQueue: exact (queue of q_max gradients) or ema (no queue)")
      ->check(CLI::IsMember({"exact", "ema"}))
      ->capture_default_str();
}

// Fused kernels and mixed precision.
void add_precision_options(CLI::App& app, TrainConfig& cfg) {
  app.add_flag(
      "--fused-cuda", cfg.fused_cuda,
      "On CUDA, use sgdx's fused kernels: the GradQueue step, its clustered statistics and k-means, the "
      "per-sample norms of importance sampling (not yet verified on a GPU: off by default)");
  app.add_option(
         "--amp", cfg.amp,
         "Mixed precision: none, bf16 or fp16 (autocast of the forward and the loss on the training "
         "device; fp16 with dynamic loss scaling, whose skipped steps are reported). Not with svrg, the "
         "clustered GradQueue step or --sampling exact; on a CPU it runs but is slow")
      ->check(CLI::IsMember({"none", "bf16", "fp16"}))
      ->capture_default_str();
}

// Long-tailed training sets and class balancing.
void add_balance_options(CLI::App& app, TrainConfig& cfg) {
  app.add_option(
         "--imbalance", cfg.imbalance,
         "Make the training set long-tailed: class c keeps n_0 * R^(-c/(C-1)) examples (R >= 1; 0: off). "
         "The test set stays as it is; head/tail accuracy is reported")
      ->check(finite_number(0))
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            const double v = std::stod(text);
            return v == 0 || v >= 1 ? "" : "must be 0 (off) or a ratio >= 1, got " + text;
          },
          "0 or >= 1"));
  app.add_option(
         "--balance", cfg.balance,
         "none (uniform), ts (temperature sampling), scalarize (uniform draws, loss weights w_k(tau)) or "
         "cooldown (ts with tau then 1 from half of the steps)")
      ->check(CLI::IsMember({"none", "ts", "scalarize", "cooldown"}))
      ->capture_default_str();
  app.add_option("--tau", cfg.tau, "Temperature of ts/scalarize, first temperature of cooldown")
      ->check(finite_number(0, std::numeric_limits<double>::infinity(), /*lo_open=*/true))
      ->capture_default_str();
}

// Importance sampling.
void add_sampling_options(CLI::App& app, TrainConfig& cfg) {
  app.add_option(
         "--sampling", cfg.sampling,
         "Importance sampling scores: uniform, loss, upper-bound (K&F, ||softmax - onehot||) or exact "
         "(per-sample gradient norms); weights 1/(N p) keep the gradient unbiased")
      ->check(CLI::IsMember({"uniform", "loss", "upper-bound", "exact"}))
      ->capture_default_str();
  app.add_option(
         "--presample", cfg.presample,
         "K&F presampling ratio R: draw R*b uniformly, score them with a forward pass, keep b (0: off; "
         "scores cached per example instead)")
      ->check(integer(0));
  app.add_option("--mix", cfg.mix, "Importance sampling: weight eps of the uniform component, in (0, 1]")
      ->check(finite_number(0, 1, /*lo_open=*/true))
      ->capture_default_str();
  app.add_option("--score-beta", cfg.score_beta,
                 "Importance sampling: cached-score smoothing s <- beta s + (1-beta) s_new")
      ->check(finite_number(0, 0.999))
      ->capture_default_str();
}

// How much of the data, how many threads.
void add_resource_options(CLI::App& app, CliOptions& o) {
  app.add_option("--train-subset", o.cfg.train_subset, "Use only the first N training examples (0: all)")
      ->check(integer(0));
  app.add_option("--threads", o.threads, "CPU threads for LibTorch (0: its default)")
      ->check(integer(0, 1 << 16));
}

// Result files, checkpoints and what is shown.
void add_output_options(CLI::App& app, CliOptions& o) {
  app.add_option("--out", o.out_dir, "Output directory (default: runs/<dataset>-<model>)")
      ->check(output_directory());
  app.add_option(
         "--checkpoint-every", o.checkpoint_every,
         "Write <out>/checkpoint.pt every N optimizer steps (0: only when stopped by SIGINT, SIGTERM or "
         "--stop-after); atomic, so a kill at any moment leaves the previous one loadable")
      ->check(integer(0));
  app.add_option("--stop-after", o.stop_after,
                 "Stop after N optimizer steps in this process with a checkpoint (exit status 75), e.g. for "
                 "preemptible jobs; continue with --resume")
      ->check(integer(1));
  app.add_option(
      "--resume", o.resume_dir,
      "Continue the run whose output directory (with checkpoint.pt) is DIR, with the same options; the "
      "result is bit-identical to an uninterrupted run (same thread count)");
  app.add_flag("--save-models", o.save_models,
               "Write each run's final parameters to <out>/models/<run>-seed<S>.pt");
  app.add_flag("--no-progress", o.no_progress, "No progress display");
  app.add_flag("--no-plot", o.no_plot, "Do not draw the PNG plot");
}

}  // namespace

// --help lists the groups, and the options in each, in the order they are added here.
void add_options(CLI::App& app, CliOptions& o) {
  app.footer(
      "Across processes: torchrun --standalone --nproc-per-node N "
      "--no-python sgdx-train ... trains one model data-parallel (or set MASTER_ADDR, MASTER_PORT, RANK and "
      "WORLD_SIZE for each rank yourself); --batch-size is the global batch and rank 0 alone prints and "
      "writes. The c10d store is unauthenticated: trusted networks only (docs/distributed.md).");
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("sgdx-train: error: ") + e.what() + " (see --help)\n";
  });
  add_data_options(app, o.cfg);
  add_augment_options(app, o);
  add_run_options(app, o);
  add_optimizer_options(app, o.cfg);
  add_rsgd_options(app, o.cfg);
  add_gradqueue_options(app, o.cfg);
  add_precision_options(app, o.cfg);
  add_balance_options(app, o.cfg);
  add_sampling_options(app, o.cfg);
  add_resource_options(app, o);
  add_output_options(app, o);
}

}  // namespace sgdx_train

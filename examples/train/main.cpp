// sgdx-train: trains the example models with LibTorch's and sgdx's optimizers,
// writes per-epoch metrics (CSV, JSON), a markdown summary and a PNG plot.
#include <fmt/core.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <filesystem>
#include <limits>
#include <sstream>

#include "../common/cli_checks.h"
#include "report.h"
#include "resume.h"
#include "sgdx/config.h"
#include "sgdx/data/temperature.h"
#include "sgdx/data/tensor_dataset.h"
#include "sgdx/models/models.h"
#include "trainer.h"

namespace {

// A comma-separated list; an empty list or an empty item is an error naming the option.
std::vector<std::string> split_list(const std::string& s, const std::string& option) {
  TORCH_CHECK(!s.empty(), option, ": the list is empty");
  std::vector<std::string> out;
  size_t begin = 0;
  while (true) {
    const size_t end = s.find(',', begin);
    out.push_back(s.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    TORCH_CHECK(!out.back().empty(), option, ": item ", out.size(), " of '", s, "' is empty");
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

using sgdx_examples::finite_number;
using sgdx_examples::integer;
using sgdx_examples::output_directory;

int fail(const std::string& msg) {
  std::fprintf(stderr, "sgdx-train: error: %s\n", first_line(msg).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  sgdx_train::TrainConfig cfg;
  std::string optimizer = "sgd", compare, out_dir;
  int64_t seed = 0;
  int seeds = 1, threads = 0;
  int64_t checkpoint_every = 0, stop_after = 0;
  std::string resume_dir;
  bool no_progress = false, no_plot = false, save_models = false;
  double lr = -1;

  CLI::App app{"sgdx-train: train an example model and compare optimizers (sgdx " SGDX_VERSION ")"};
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("sgdx-train: error: ") + e.what() + " (see --help)\n";
  });
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
  auto* opt_flag = app.add_option("--optimizer", optimizer,
                                  "sgd, sgdm, nesterov, adam, rsgd, svrg or gqsgdm (GradQueue-SGDM)")
                       ->check(CLI::IsMember(sgdx_train::optimizer_names()))
                       ->capture_default_str();
  app.add_option(
         "--compare", compare,
         "Comma-separated runs to train one after another and compare: optimizer[@balance[:tau]], "
         "e.g. sgd,sgdm,rsgd,adam or sgdm@ts:1,sgdm@ts:5,sgdm@cooldown:5,sgdm@scalarize:5; gqsgdm-kN is "
         "GradQueue-SGDM with N clusters, e.g. sgdm,gqsgdm,gqsgdm-k4")
      ->excludes(opt_flag);
  // (compare items: optimizer[@balance[:tau]][+sampling], e.g. sgdm+upper-bound)
  app.add_option("--lr", lr,
                 "Learning rate (default per optimizer: sgd 0.1, sgdm/nesterov/rsgd/gqsgdm 0.01, adam 0.001)")
      ->check(finite_number(0));
  app.add_option("--batch-size", cfg.batch_size, "Minibatch size")->check(integer(1))->capture_default_str();
  app.add_option("--epochs", cfg.epochs, "Training epochs")
      ->check(integer(1, std::numeric_limits<int>::max()))
      ->capture_default_str();
  app.add_option("--seed", seed, "First seed (model init, data order, R-SGD draws)")
      ->check(integer(0))
      ->capture_default_str();
  app.add_option("--seeds", seeds, "Number of seeds per optimizer (seed, seed+1, ...)")
      ->check(integer(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--device", cfg.device, "auto (cuda when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--momentum", cfg.momentum, "Momentum of sgdm, nesterov and gqsgdm")
      ->check(finite_number())
      ->capture_default_str();
  app.add_option("--weight-decay", cfg.weight_decay, "L2 weight decay for every optimizer")
      ->check(finite_number(0))
      ->capture_default_str();
  app.add_option("--schedule", cfg.schedule, "Learning-rate schedule: constant or cosine (per step, to 0)")
      ->check(CLI::IsMember({"constant", "cosine"}))
      ->capture_default_str();
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
  app.add_option("--train-subset", cfg.train_subset, "Use only the first N training examples (0: all)")
      ->check(integer(0));
  app.add_option("--threads", threads, "CPU threads for LibTorch (0: its default)")
      ->check(integer(0, 1 << 16));
  app.add_option("--out", out_dir, "Output directory (default: runs/<dataset>-<model>)")
      ->check(output_directory());
  app.add_option(
         "--checkpoint-every", checkpoint_every,
         "Write <out>/checkpoint.pt every N optimizer steps (0: only when stopped by SIGINT, SIGTERM or "
         "--stop-after); atomic, so a kill at any moment leaves the previous one loadable")
      ->check(integer(0));
  app.add_option("--stop-after", stop_after,
                 "Stop after N optimizer steps in this process with a checkpoint (exit status 75), e.g. for "
                 "preemptible jobs; continue with --resume")
      ->check(integer(1));
  app.add_option(
      "--resume", resume_dir,
      "Continue the run whose output directory (with checkpoint.pt) is DIR, with the same options; the "
      "result is bit-identical to an uninterrupted run (same thread count)");
  app.add_flag("--save-models", save_models,
               "Write each run's final parameters to <out>/models/<run>-seed<S>.pt");
  app.add_flag("--no-progress", no_progress, "No progress display");
  app.add_flag("--no-plot", no_plot, "Do not draw the PNG plot");
  CLI11_PARSE(app, argc, argv);

  try {
    if (app.count("--out") > 0 && out_dir.empty())
      return fail("--out: the output directory must not be empty");
    if (app.count("--resume") > 0) {
      if (resume_dir.empty()) return fail("--resume: the directory must not be empty");
      if (!out_dir.empty() && std::filesystem::path(out_dir).lexically_normal() !=
                                  std::filesystem::path(resume_dir).lexically_normal())
        return fail("--out '" + out_dir + "' and --resume '" + resume_dir +
                    "' differ: a resumed run writes into the "
                    "directory it resumes");
      out_dir = resume_dir;
    }
    if (lr >= 0) cfg.lr = lr;
    cfg.progress = !no_progress;
    std::vector<std::string> optimizers;
    if (app.count("--compare") > 0) {
      optimizers = split_list(compare, "--compare");
    } else {
      optimizers = {optimizer};
    }
    std::vector<sgdx_train::RunSpec> specs;
    for (const auto& item : optimizers) {
      // Every setting is validated before any data is read or file written.
      specs.push_back(sgdx_train::parse_run_spec(item, cfg));
      auto probe = torch::zeros({1}, torch::requires_grad());
      sgdx_train::make_optimizer(specs.back().optimizer, {probe}, cfg);
    }
    if (threads > 0) torch::set_num_threads(threads);
    torch::Device device(torch::kCPU);
    if (cfg.device == "cuda" || (cfg.device == "auto" && torch::cuda::is_available())) {
      if (!torch::cuda::is_available()) return fail("--device cuda: no CUDA device is available");
      device = torch::Device(torch::kCUDA);
    }
    if (out_dir.empty()) out_dir = fmt::format("runs/{}-{}", cfg.dataset, cfg.model);
    if (const auto problem = sgdx_examples::output_directory_problem(out_dir); !problem.empty())
      return fail("output directory: " + problem);
    const std::string checkpoint = (std::filesystem::path(out_dir) / "checkpoint.pt").string();
    std::optional<sgdx_train::CheckpointHeader> resumed;
    if (!resume_dir.empty()) {
      resumed = sgdx_train::read_header(checkpoint);
    } else if (std::filesystem::exists(checkpoint)) {
      return fail("'" + out_dir + "' holds the checkpoint of an unfinished run: continue it with --resume " +
                  out_dir + ", or remove " + checkpoint);
    }
    auto data = sgdx::data::load_dataset(cfg.dataset, cfg.data_dir);
    if (cfg.imbalance > 1) {
      // The same long-tailed subset for every run (its own seed, 0).
      auto idx = sgdx::data::long_tailed_indices(data.train.targets(), cfg.imbalance, 0);
      data.train = sgdx::data::TensorDataset(data.train.inputs().index_select(0, idx),
                                             data.train.targets().index_select(0, idx));
    }

    nlohmann::json config = {
        {"dataset", cfg.dataset},
        {"model", cfg.model},
        {"device", device.str()},
        {"batch_size", cfg.batch_size},
        {"epochs", cfg.epochs},
        {"seed", seed},
        {"seeds", seeds},
        {"optimizers", optimizers},
        {"momentum", cfg.momentum},
        {"weight_decay", cfg.weight_decay},
        {"schedule", cfg.schedule},
        {"imbalance", cfg.imbalance},
        {"balance", cfg.balance},
        {"tau", cfg.tau},
        {"sampling", cfg.sampling},
        {"presample", cfg.presample},
        {"mix", cfg.mix},
        {"score_beta", cfg.score_beta},
        {"train_examples", cfg.train_subset > 0
                               ? std::min<int64_t>(cfg.train_subset, data.train.inputs().size(0))
                               : data.train.inputs().size(0)},
        {"threads", torch::get_num_threads()},
        {"fused_cuda", cfg.fused_cuda},
        {"amp", cfg.amp},
        {"rsgd",
         {{"gamma", cfg.rsgd_gamma},
          {"gamma0", cfg.rsgd_gamma0},
          {"max_prob", cfg.rsgd_max_prob},
          {"granularity", cfg.rsgd_granularity},
          {"memory", cfg.rsgd_memory}}},
        {"gradqueue",
         {{"clusters", cfg.clusters},
          {"granularity", cfg.gq_granularity},
          {"scope", cfg.gq_scope},
          {"path", cfg.gq_path},
          {"storage", cfg.gq_storage}}},
        {"data",
         {{"train", sgdx_train::content_hash(data.train.inputs()) + "-" +
                        sgdx_train::content_hash(data.train.targets())},
          {"test", sgdx_train::content_hash(data.test.inputs()) + "-" +
                       sgdx_train::content_hash(data.test.targets())}}}};
    nlohmann::json lrs;
    for (const auto& spec : specs) lrs[spec.label] = cfg.lr.value_or(sgdx_train::default_lr(spec.optimizer));
    config["lr"] = lrs;
    std::vector<sgdx_train::RunResult> runs;
    int64_t first_run = 0;
    if (resumed) {
      // A checkpoint continues only the run that wrote it: anything else is refused
      // here, before a file changes. The thread count only changes the bits.
      const auto diff = sgdx_train::config_differences(resumed->config, config, {"threads"});
      if (!diff.empty()) return fail("checkpoint '" + checkpoint + "' is from a different run: " + diff);
      if (resumed->config.value("threads", 0) != torch::get_num_threads()) {
        std::fprintf(stderr,
                     "sgdx-train: note: resuming with %d threads where the checkpoint used %d: the results "
                     "are valid but not bit-identical to an uninterrupted run\n",
                     torch::get_num_threads(), resumed->config.value("threads", 0));
      }
      runs = resumed->finished;
      first_run = resumed->next_run;
      if (first_run < 0 || first_run >= static_cast<int64_t>(specs.size()) * seeds)
        return fail(
            fmt::format("checkpoint '{}' names run {} of {}", checkpoint, first_run, specs.size() * seeds));
    }
    std::filesystem::create_directories(out_dir);
    sgdx_train::remove_stale_temporaries(out_dir);
    fmt::print("sgdx-train: {} / {} on {} ({} train, {} test examples), batch {}, {} epochs, {} seed(s){}\n",
               cfg.dataset, cfg.model, device.str(), config["train_examples"].get<int64_t>(),
               data.test.inputs().size(0), cfg.batch_size, cfg.epochs, seeds,
               resumed ? fmt::format(", resumed at run {} of {}", first_run + 1, specs.size() * seeds) : "");

    std::vector<double> summarised;  // once per temperature
    for (const auto& spec : specs) {
      if (spec.balance == "none" || std::count(summarised.begin(), summarised.end(), spec.tau)) continue;
      summarised.push_back(spec.tau);
      fmt::print("training class sizes and temperature-{} sampling\n{}", spec.tau,
                 sgdx::data::temperature_summary(
                     sgdx::data::group_sizes(data.train.targets(), data.num_classes), spec.tau));
    }
    const std::string csv = out_dir + "/metrics.csv", json = out_dir + "/metrics.json";
    // Metrics of the finished runs and of the run in progress, rewritten after every epoch.
    std::optional<sgdx_train::RunResult> current;
    auto all_runs = [&] {
      auto all = runs;
      if (current) all.push_back(*current);
      return all;
    };
    auto write_metrics = [&] {
      const auto all = all_runs();
      sgdx_train::write_atomically(csv, sgdx_train::metrics_csv(all));
      sgdx_train::write_atomically(json, sgdx_train::metrics_json(config, all).dump(2));
    };
    auto write_summary = [&](const std::vector<sgdx_train::RunResult>& all) {
      const auto table = sgdx_train::summary_table(all);
      sgdx_train::write_atomically(out_dir + "/summary.md", table);
      return table;
    };
    sgdx_train::install_stop_signals();
    int64_t steps_left = stop_after;
    try {
      for (int64_t r = first_run; r < static_cast<int64_t>(specs.size()) * seeds; ++r) {
        const auto& spec = specs[static_cast<size_t>(r / seeds)];
        const int64_t run_seed = seed + r % seeds;
        current = sgdx_train::RunResult{spec.label, run_seed, {}, {}};
        sgdx_train::RunHooks hooks;
        hooks.epoch_done = [&](const sgdx_train::RunResult& partial) {
          current = partial;
          write_metrics();
        };
        hooks.checkpoint_path = checkpoint;
        hooks.checkpoint_every = checkpoint_every;
        hooks.steps_left = stop_after > 0 ? &steps_left : nullptr;
        hooks.write_header = [&](torch::serialize::OutputArchive& a) {
          sgdx_train::write_header(a, sgdx_train::CheckpointHeader{config, runs, r});
        };
        hooks.resume = resumed.has_value() && r == first_run;
        if (save_models) {
          hooks.model_path =
              (std::filesystem::path(out_dir) / "models" / fmt::format("{}-seed{}.pt", spec.label, run_seed))
                  .string();
          std::filesystem::create_directories(std::filesystem::path(hooks.model_path).parent_path());
        }
        runs.push_back(sgdx_train::train_one(data, spec, run_seed, cfg, device, hooks));
        current.reset();
        write_metrics();
      }
    } catch (const sgdx_train::Stopped& stopped) {
      std::fprintf(stderr,
                   "sgdx-train: %s: checkpoint %s written; continue with the same options and --resume %s\n",
                   stopped.what(), checkpoint.c_str(), out_dir.c_str());
      return sgdx_train::kExitStopped;
    } catch (const sgdx_train::Diverged& diverged) {
      // The finished runs and epochs stay in the metrics; the summary says what finished.
      if (current) current->status = fmt::format("diverged at step {}", diverged.step());
      write_metrics();
      write_summary(all_runs());
      return fail(diverged.what());
    }
    std::error_code ec;
    std::filesystem::remove(checkpoint, ec);  // the run is complete: its metrics are final
    const auto table = write_summary(runs);
    fmt::print("\n{}\n", table);
    fmt::print("metrics: {} and {}\n", csv, json);
    if (!no_plot) {
      std::string why;
      const std::string png = out_dir + "/training.png";
      if (sgdx_train::plot_runs(runs, png,
                                fmt::format("{} / {} (batch {}, mean of {} seed(s))", cfg.dataset, cfg.model,
                                            cfg.batch_size, seeds),
                                why)) {
        fmt::print("plot: {}\n", png);
      } else {
        std::fprintf(stderr, "sgdx-train: warning: no plot: %s\n", why.c_str());
      }
    }
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  return 0;
}

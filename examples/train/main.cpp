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
#include "cli.h"
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

int fail(const std::string& msg) {
  std::fprintf(stderr, "sgdx-train: error: %s\n", first_line(msg).c_str());
  return 1;
}

}  // namespace
int main(int argc, char** argv) {
  sgdx_train::CliOptions o;
  CLI::App app{"sgdx-train: train an example model and compare optimizers (sgdx " SGDX_VERSION ")"};
  sgdx_train::add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  auto& cfg = o.cfg;
  const auto& optimizer = o.optimizer;
  const auto& compare = o.compare;
  const auto& resume_dir = o.resume_dir;
  const auto seed = o.seed;
  const auto seeds = o.seeds;
  std::string out_dir = o.out_dir;

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
    if (o.lr >= 0) cfg.lr = o.lr;
    cfg.progress = !o.no_progress;
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
    if (o.threads > 0) torch::set_num_threads(o.threads);
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
    int64_t steps_left = o.stop_after;
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
        hooks.checkpoint_every = o.checkpoint_every;
        hooks.steps_left = o.stop_after > 0 ? &steps_left : nullptr;
        hooks.write_header = [&](torch::serialize::OutputArchive& a) {
          sgdx_train::write_header(a, sgdx_train::CheckpointHeader{config, runs, r});
        };
        hooks.resume = resumed.has_value() && r == first_run;
        if (o.save_models) {
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
    if (!o.no_plot) {
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

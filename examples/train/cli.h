#pragma once
// sgdx-train's command line: its options and their checks.
#include <CLI/CLI.hpp>

#include <string>

#include "trainer.h"

namespace sgdx_train {

/// Everything the command line sets.
struct CliOptions {
  TrainConfig cfg;
  std::string optimizer = "sgd", compare, out_dir, resume_dir;
  int64_t seed = 0, checkpoint_every = 0, stop_after = 0;
  int seeds = 1, threads = 0;
  bool no_progress = false, no_plot = false, save_models = false;
  bool augment = false, no_augment = false;  ///< neither: on for cifar10, off otherwise
  int64_t validation = -1;                   ///< < 0: 5000 for cifar10, 0 otherwise
  double lr = -1;                            ///< < 0: each optimizer's default
};

/// Adds sgdx-train's options to `app`, bound to `o`. Every value is checked as it is
/// parsed (CLI11 validators from examples/common/cli_checks.h); the checks that need
/// several options at once run in resolve_invocation (invocation.h).
void add_options(CLI::App& app, CliOptions& o);

}  // namespace sgdx_train

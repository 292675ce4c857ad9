#pragma once
// Metrics of training runs and their outputs: CSV, JSON, a markdown table and
// a PNG plot (drawn by gnuplot when it is installed). No LibTorch here.
#include <nlohmann/json.hpp>

#include "../common/atomic_file.h"

#include <cmath>

#include <string>
#include <vector>

namespace sgdx_train {

struct EpochMetrics {
  int epoch = 0;
  long long steps = 0;
  double train_loss = 0, test_loss = 0, test_accuracy = 0, seconds = 0;
  /// On the validation split held out from the training set (NaN without one).
  double val_loss = std::nan(""), val_accuracy = std::nan("");
  /// Minibatch gradient norms ||grad|| over the epoch's steps: mean and variance.
  double grad_norm_mean = 0, grad_norm_var = 0;
  /// Test accuracy and loss of every class; head/tail: the classes with at
  /// least / fewer than the median training count (NaN when all are equal).
  std::vector<double> class_accuracy, class_loss;
  double head_accuracy = 0, tail_accuracy = 0;
  /// Importance sampling: quality Q of the sampling distribution on a fixed
  /// training subset (NaN when sampling uniformly), K&F's tau, share of importance steps.
  double quality = std::nan(""), tau = 0, importance_step_fraction = 0;
};

struct RunResult {
  std::string optimizer;  ///< the run's label: optimizer[@balance:tau]
  long long seed = 0;
  std::vector<EpochMetrics> epochs;
  std::string status;  ///< empty: finished; otherwise why it ended early ("diverged at step 12")
};

using sgdx_examples::write_atomically;  // result files are never half-written

std::string metrics_csv(const std::vector<RunResult>& runs);
nlohmann::json metrics_json(const nlohmann::json& config, const std::vector<RunResult>& runs);

/// One row per optimizer: final test accuracy (and validation accuracy when there is a
/// split), test loss, train loss and seconds as mean ± std over seeds (markdown); runs
/// that ended early are listed below it, and `test_note` (what the test set is) under it.
std::string summary_table(const std::vector<RunResult>& runs, const std::string& test_note = "");

/// Plots test accuracy and train loss against epoch and against seconds
/// (mean over seeds) into `png`. Returns false (and says why in `why`) when
/// gnuplot is missing or fails.
bool plot_runs(const std::vector<RunResult>& runs, const std::string& png, const std::string& title,
               std::string& why);

}  // namespace sgdx_train

#pragma once
// The parts of a training run that do not depend on its optimizer or sampler:
// progress display, evaluation, autocast, per-example losses and scores.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <unistd.h>

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "report.h"
#include "sgdx/data/tensor_dataset.h"
#include "sgdx/models/models.h"
#include "world.h"

namespace sgdx_train {

// A one-line progress display on stderr, redrawn at most 5 times a second on
// a terminal; elsewhere (logs, CI) a line per epoch.
class Progress {
 public:
  Progress(bool enabled, std::string label)
      : enabled_(enabled), tty_(::isatty(2) != 0), label_(std::move(label)) {}
  void update(int epoch, int epochs, int64_t batch, int64_t batches, double loss, double seconds) {
    if (!enabled_ || !tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (batch != batches && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const int width = 24;
    const int filled = static_cast<int>(width * batch / std::max<int64_t>(batches, 1));
    std::fprintf(stderr, "\r%s epoch %d/%d [%s%s] %3d%% loss %.4f %.1fs ", label_.c_str(), epoch, epochs,
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 static_cast<int>(100 * batch / std::max<int64_t>(batches, 1)), loss, seconds);
    std::fflush(stderr);
  }
  void epoch_done(const EpochMetrics& m, int epochs) {
    if (!enabled_) return;
    const std::string val =
        std::isnan(m.val_accuracy) ? "" : fmt::format(" val acc {:.2f}%", 100 * m.val_accuracy);
    std::fprintf(stderr, "%s%s epoch %d/%d train loss %.4f test loss %.4f test acc %.2f%%%s %.1fs\n",
                 tty_ ? "\r\033[K" : "", label_.c_str(), m.epoch, epochs, m.train_loss, m.test_loss,
                 100 * m.test_accuracy, val.c_str(), m.seconds);
  }

 private:
  bool enabled_, tty_;
  std::string label_;
  std::chrono::steady_clock::time_point last_{};
};

// What Python's `with torch.autocast(device_type, dtype):` does on entry and exit; a
// no-op without a dtype.
class AutocastRegion {
 public:
  AutocastRegion(c10::DeviceType type, std::optional<at::ScalarType> dtype)
      : type_(type), active_(dtype.has_value()) {
    if (!active_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(type_);
    prev_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, *dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastRegion() {
    if (!active_) return;
    // The cached low-precision copies of the weights are stale after the step.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, prev_enabled_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
  }
  AutocastRegion(const AutocastRegion&) = delete;
  AutocastRegion& operator=(const AutocastRegion&) = delete;

 private:
  c10::DeviceType type_;
  bool active_, prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

/// Test loss and accuracy overall and per class; head/tail accuracy by the
/// classes' training counts. Across processes each rank evaluates its share of the
/// test set and the per-class sums are added up (every rank gets the same metrics).
void evaluate(sgdx::models::Classifier& model, const sgdx::data::TensorDataset& test, int64_t classes,
              const std::vector<int64_t>& train_counts, const torch::Device& device, EpochMetrics& m,
              const World& world = World());
/// The autocast dtype of --amp (none: no autocast).
std::optional<at::ScalarType> amp_dtype(const std::string& amp);
/// Unreduced cross-entropy.
at::Tensor per_example_ce(const at::Tensor& logits, const at::Tensor& y);
/// Forward-only scores of a batch for a sampling mode ("loss" or "upper-bound").
at::Tensor forward_scores(const std::string& sampling, const at::Tensor& logits, const at::Tensor& y);
/// Exact per-example gradient norms of `model` on (x, y) (one backward with capture).
at::Tensor exact_norms(sgdx::models::Classifier& model, const at::Tensor& x, const at::Tensor& y);

}  // namespace sgdx_train

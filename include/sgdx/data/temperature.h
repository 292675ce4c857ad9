#pragma once
// Temperature sampling, scalarization and Cooldown for imbalanced multi-group
// data: Li, Xu, Tan, Murray, Khashabi, "Upsample or Upweight? Balanced Training on
// Heavily Imbalanced Datasets", NAACL 2025 (arXiv:2410.04579).
//   p(k; tau) = n_k^(1/tau) / sum_j n_j^(1/tau)             temperature sampling TS(tau)
//   w_k(tau)  = p(k; tau) / p(k; 1)                          scalarization S(tau) weights
//   F(tau)    = sum_k p(k; tau)^2 / p(k; 1)  (>= 1)          how much noisier S is than TS
#include <ATen/core/Tensor.h>
#include <torch/data/samplers/base.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::data {

/// p(k; tau) for group sizes n_k (all > 0), float64 [K].
SGDX_API at::Tensor temperature_probs(const std::vector<int64_t>& sizes, double tau);
/// Scalarization loss weights w_k(tau) = p(k; tau) / p(k; 1), float64 [K].
SGDX_API at::Tensor scalarization_weights(const std::vector<int64_t>& sizes, double tau);
/// F(tau) = sum_k p(k; tau)^2 / p(k; 1).
SGDX_API double variance_factor(const std::vector<int64_t>& sizes, double tau);
/// A table of n_k, p(k; 1), p(k; tau), w_k(tau) and F(tau), one group a line.
SGDX_API std::string temperature_summary(const std::vector<int64_t>& sizes, double tau);

/// A piecewise-constant temperature over optimizer steps: (first step, tau)
/// pairs, the first at step 0, steps strictly increasing, every tau > 0.
class SGDX_API TemperatureSchedule {
 public:
  explicit TemperatureSchedule(std::vector<std::pair<int64_t, double>> points);
  static TemperatureSchedule constant(double tau);
  /// Cooldown: tau_high until half of `total_steps`, then tau_low (5 -> 1).
  static TemperatureSchedule cooldown(int64_t total_steps, double tau_high = 5.0, double tau_low = 1.0);
  double at(int64_t step) const;
  const std::vector<std::pair<int64_t, double>>& points() const { return points_; }

 private:
  std::vector<std::pair<int64_t, double>> points_;
};

/// Group sizes from a group-id (or label) tensor; ids must be in [0, num_groups).
/// num_groups <= 0: max id + 1. Every group must be non-empty.
SGDX_API std::vector<int64_t> group_sizes(const at::Tensor& group_ids, int64_t num_groups = 0);

/// Temperature sampler for the LibTorch DataLoader: each example of a batch is
/// drawn with replacement by choosing a group from p(.; tau(step)) and then an
/// example of that group uniformly. Batch s (counted over the sampler's life, not
/// per epoch) uses tau(s), so tau may change mid-epoch. Draws are a pure function
/// of (seed, s, position in the batch) (Philox4x32-10), which makes the stream
/// independent of DataLoader prefetching and makes save/load resume it exactly.
/// Copies share state (the DataLoader keeps its own copy of the sampler).
class SGDX_API TemperatureSampler : public torch::data::samplers::Sampler<> {
 public:
  /// `batches_per_epoch` <= 0: ceil(N / batch_size) batches, computed at the first next().
  /// `stream`: an independent draw stream for the same seed (a data-parallel rank,
  /// Philox key rank_stream_seed(seed, stream)); stream 0 draws with the seed itself.
  /// A saved state loads into any stream and keeps the loader's stream.
  TemperatureSampler(const at::Tensor& group_ids, TemperatureSchedule schedule, uint64_t seed = 0,
                     int64_t batches_per_epoch = 0, int64_t num_groups = 0, int64_t stream = 0);

  void reset(std::optional<size_t> new_size = std::nullopt) override;
  std::optional<std::vector<size_t>> next(size_t batch_size) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Batches drawn so far (the step of the next batch).
  int64_t step() const;
  double current_tau() const;
  const std::vector<int64_t>& sizes() const;
  /// Group of every example, int64 [N].
  const at::Tensor& group_ids() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// Indices of a long-tailed subset of a labelled dataset: class c keeps
/// floor(n_max * ratio^(-c / (C - 1))) examples (class 0 the head, class C-1 the
/// tail, n_max the size of class 0), chosen by a seeded permutation. Throws when a
/// class has fewer examples than it needs. Sorted int64 indices.
SGDX_API at::Tensor long_tailed_indices(const at::Tensor& labels, double imbalance_ratio, uint64_t seed = 0);

}  // namespace sgdx::data

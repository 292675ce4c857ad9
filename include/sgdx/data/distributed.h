#pragma once
// Samplers for data-parallel training (issue #17). Every rank builds the same
// sampler with the same seed and its sgdx::dist::Communicator; each rank's loader
// yields that rank's share of the step's global batch. They talk only through the
// Communicator, and only in the calls marked collective: next() never
// communicates, so a DataLoader may call it from any thread and ahead of time.
//
// Per-rank streams: rank r draws with Philox key rank_stream_seed(seed, r)
// (importance.h), so rank 0 of a world of one draws exactly what the one-process
// sampler with the same seed draws, and ranks draw independently of each other.
#include <ATen/core/Tensor.h>
#include <torch/data/samplers/base.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "sgdx/data/importance.h"
#include "sgdx/data/temperature.h"
#include "sgdx/export.h"

namespace sgdx::dist {
class Communicator;
}  // namespace sgdx::dist

namespace sgdx::data {

struct DistributedImportanceOptions {
  double mix = 0.1;  ///< eps: weight of the uniform component, in (0, 1]
  uint64_t seed = 0;
  /// Batches per rank per epoch; <= 0: ceil(N / (world * batch_size)), so the
  /// ranks together see about N examples an epoch.
  int64_t batches_per_epoch = 0;
  double initial_score = 1.0;
  /// The prefetch rule: batch s is drawn from the table holding exactly the updates
  /// of batches 0 .. s-1-lag (none while s <= lag). A loader that draws up to P
  /// batches beyond the one being trained on needs lag >= P: LibTorch's DataLoader
  /// needs lag >= max_jobs (2 per worker by default); workers = 0 needs lag 0,
  /// which uses every score as soon as it exists.
  int64_t lag = 0;
};

/// K&F / Lahire importance sampling (importance.h) across ranks. Every rank holds
/// the same score table; in step s each rank draws its b indices from the same
/// p (the table of the prefetch rule) with its own stream, so the union over ranks
/// is a sample of world * b with replacement from p, and the weights 1/(N p_i)
/// keep the global estimator unbiased. update() is collective: it all-gathers every
/// rank's (indices, scores) and every rank applies them in rank order (rank 0's
/// entries first, each rank's exactly as ImportanceSampler::update would), so the
/// tables stay bit-identical and equal a one-process ImportanceSampler fed the same
/// updates in the same order.
///
/// Use: per step, take() the batch the loader yielded, compute scores, then
/// update(batch, scores) on every rank, once per batch and in batch order (empty
/// tensors when there are no fresh scores: the rule waits for every batch's
/// update). A draw whose updates have not arrived throws, naming the lag it needs.
/// Copies share state (the DataLoader copies the sampler). Every sequence number is
/// drawn once: batches drawn but not taken when the loader is reset (or the
/// sampler loaded) are yielded again by next(), identical.
///
/// Save/load: the state saved is the same on every rank (the table as of the
/// oldest untaken batch plus the gathered updates after it), so one rank's file
/// resumes every rank exactly. Loading a state saved with another size, world size,
/// seed, mix or lag is refused.
class SGDX_API DistributedImportanceSampler : public torch::data::samplers::Sampler<> {
 public:
  DistributedImportanceSampler(int64_t size, std::shared_ptr<sgdx::dist::Communicator> comm,
                               DistributedImportanceOptions options = {});

  void reset(std::optional<size_t> new_size = std::nullopt) override;
  /// This rank's `batch_size` indices of the next batch. Never communicates.
  std::optional<std::vector<size_t>> next(size_t batch_size) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// The oldest batch next() returned and nobody took, with its weights.
  ImportanceBatch take();
  /// Collective. The fresh scores of batch `batch.sequence` (which must be the
  /// oldest batch not updated yet, and taken) for `batch.indices`.
  void update(const ImportanceBatch& batch, const at::Tensor& scores, double beta = 0.0);
  /// Collective. Scores for any indices, counted as the update of the oldest taken
  /// batch not updated yet. Ranks may pass different counts; beta must agree.
  void update(const at::Tensor& indices, const at::Tensor& scores, double beta = 0.0);

  /// p_i of the current table (the one the latest draw used), float64.
  at::Tensor probabilities(const at::Tensor& indices) const;
  /// The current table's scores, float64 [N].
  at::Tensor scores() const;
  /// Batches whose updates the current table holds (its s - lag for the latest draw s).
  int64_t applied_updates() const;
  int64_t size() const;
  int64_t taken() const;
  int64_t lag() const;
  const std::shared_ptr<sgdx::dist::Communicator>& communicator() const;

 private:
  void gather_update(std::optional<int64_t> batch_sequence, const at::Tensor& indices,
                     const at::Tensor& scores, double beta);
  struct State;
  std::shared_ptr<State> state_;
};

/// Temperature sampling (temperature.h) across ranks: batch s of every rank uses
/// tau = schedule.at(s), s counted over the sampler's life, so every rank uses the
/// same tau (and Cooldown switches) at the same step as long as the ranks draw in
/// lockstep, which check_agreement() verifies. Rank r draws with its own stream.
/// batches_per_epoch <= 0: ceil(N / (world * batch_size)) per rank.
class SGDX_API DistributedTemperatureSampler : public torch::data::samplers::Sampler<> {
 public:
  DistributedTemperatureSampler(const at::Tensor& group_ids, TemperatureSchedule schedule,
                                std::shared_ptr<sgdx::dist::Communicator> comm, uint64_t seed = 0,
                                int64_t batches_per_epoch = 0, int64_t num_groups = 0);

  void reset(std::optional<size_t> new_size = std::nullopt) override;
  std::optional<std::vector<size_t>> next(size_t batch_size) override;
  /// The state is the same on every rank in lockstep; loading checks the world size.
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  int64_t step() const;
  double current_tau() const;
  /// Collective: throws on every rank unless all ranks are at the same step (and
  /// so the same tau).
  void check_agreement() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// Shard-by-rank sampling without replacement, LibTorch's DistributedRandomSampler
/// semantics with these differences: the permutation is sgdx's own (Fisher-Yates
/// on Philox keyed by (seed, epoch)), the same on every platform and standard
/// library; rank r takes positions r, r + world, ... (PyTorch's
/// DistributedSampler layout); and the epoch's position is saved. Without
/// drop_last every rank gets ceil(N / world) indices: the permutation is padded by
/// its own first entries, so the first (world * ceil(N / world) - N) indices are
/// seen twice in that epoch (more often when world > N); with drop_last the last N mod world of the
/// permutation are dropped and every rank gets floor(N / world). Either way every
/// rank yields the same number of batches per epoch. Call set_epoch() (or let
/// reset() keep the epoch) before each epoch; shuffle = false keeps index order.
class SGDX_API DistributedShardSampler : public torch::data::samplers::Sampler<> {
 public:
  DistributedShardSampler(int64_t size, int64_t rank, int64_t world_size, uint64_t seed = 0,
                          bool shuffle = true, bool drop_last = false);
  DistributedShardSampler(int64_t size, const sgdx::dist::Communicator& comm, uint64_t seed = 0,
                          bool shuffle = true, bool drop_last = false);

  void reset(std::optional<size_t> new_size = std::nullopt) override;
  std::optional<std::vector<size_t>> next(size_t batch_size) override;
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// Takes effect at the next reset() (the DataLoader resets at every epoch).
  void set_epoch(int64_t epoch);
  int64_t epoch() const { return epoch_; }
  /// This rank's indices for the current epoch.
  const std::vector<int64_t>& indices() const { return indices_; }
  int64_t per_rank() const;

 private:
  void populate();
  int64_t size_, rank_, world_;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<int64_t> indices_;
};

}  // namespace sgdx::data

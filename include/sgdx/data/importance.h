#pragma once
// Importance sampling for SGD. Katharopoulos & Fleuret, "Not All Samples Are
// Created Equal: Deep Learning with Importance Sampling", ICML 2018; Lahire,
// "Importance Sampling for Stochastic Gradient Descent in Deep Neural Networks",
// arXiv:2303.16529. With p_i = (1 - eps) s_i / sum(s) + eps / N and a batch I of
// b draws with replacement,
//   g_hat = (1/b) sum_{i in I} w_i grad l_i,   w_i = 1 / (N p_i)
// is unbiased for the full gradient; w_i <= 1/eps.
#include <ATen/core/Tensor.h>
#include <torch/data/samplers/base.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::dist {
class Communicator;
}  // namespace sgdx::dist

namespace sgdx::data {

/// Scores s_i >= 0 of N items in a sum tree: O(log N) update and draw, 2N
/// doubles (16 bytes per item), 64-bit indices.
class SGDX_API SumTree {
 public:
  explicit SumTree(int64_t n, double initial = 1.0);
  int64_t size() const { return n_; }
  double total() const { return tree_[1 % tree_.size()]; }
  double get(int64_t i) const;
  void set(int64_t i, double value);
  /// The item whose cumulative range holds u in [0, total()) (never a zero-score item).
  int64_t find(double u) const;
  const std::vector<double>& nodes() const { return tree_; }
  void assign_leaves(const double* values);

 private:
  int64_t n_;
  std::vector<double> tree_;  // node 1 is the root; node k < n has children 2k, 2k+1; leaves n..2n-1
};

/// The seed of rank `rank`'s independent stream: `seed` itself for rank 0 (so a
/// world of one draws exactly what the one-process samplers draw), otherwise the
/// seed xor rank * 0x9E3779B97F4A7C15 (distinct Philox keys give independent streams).
SGDX_API uint64_t rank_stream_seed(uint64_t seed, int64_t rank);

/// One draw of the importance rule: p_i = (1 - mix) s_i / sum(s) + mix / N (1/N
/// when every score is 0), as a pure function of (seed, batch sequence, position
/// in the batch) through Philox4x32-10. ImportanceSampler and
/// DistributedImportanceSampler both draw with it.
struct ImportanceDraw {
  int64_t index;
  double probability;  ///< p_index under `tree` at draw time
};
SGDX_API ImportanceDraw importance_draw(const SumTree& tree, double mix, uint64_t seed, int64_t sequence,
                                        int64_t position);
SGDX_API double importance_probability(const SumTree& tree, double mix, int64_t index);

/// The update rule s_i <- beta * s_i + (1 - beta) * score_i for `count` entries in
/// order. check_score_update() throws (messages prefixed by `who`) when beta is not
/// in [0, 1), an index is out of range or a score is not finite and >= 0;
/// apply_score_update() checks every entry before it applies any, so a rejected
/// update leaves the table as it was.
SGDX_API void check_score_update(int64_t table_size, const int64_t* indices, const double* scores,
                                 int64_t count, double beta, const char* who);
SGDX_API void apply_score_update(SumTree& tree, const int64_t* indices, const double* scores, int64_t count,
                                 double beta, const char* who);

struct ImportanceSamplerOptions {
  double mix = 0.1;  ///< eps: weight of the uniform component, in (0, 1]
  uint64_t seed = 0;
  int64_t batches_per_epoch = 0;  ///< <= 0: ceil(N / batch_size)
  double initial_score = 1.0;     ///< before any update every item scores this (uniform)
};

/// A drawn batch: its sequence number, indices and unbiasing weights 1/(N p_i).
struct ImportanceBatch {
  int64_t sequence = 0;
  std::vector<int64_t> indices;
  at::Tensor weights;  ///< float32 [b]
};

/// Importance sampler for the LibTorch DataLoader. Copies share one state (the
/// DataLoader keeps its own copy and may draw ahead): keep a copy as the handle,
/// call take() for the weights of each batch the loader yields (batches arrive in
/// draw order) and update() with fresh scores. Draws are with replacement and a
/// pure function of (seed, batch sequence number, position, scores at draw time).
class SGDX_API ImportanceSampler : public torch::data::samplers::Sampler<> {
 public:
  ImportanceSampler(int64_t size, ImportanceSamplerOptions options = {});

  void reset(std::optional<size_t> new_size = std::nullopt) override;
  std::optional<std::vector<size_t>> next(size_t batch_size) override;
  /// Saves scores, options and the position of the next batch to be taken
  /// (batches drawn ahead but not taken are drawn again after load).
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

  /// The oldest drawn batch not yet taken, with its weights (throws if none).
  ImportanceBatch take();
  /// s_i <- beta * s_i + (1 - beta) * score for each index (beta = 0: replace).
  /// Scores must be finite and >= 0.
  void update(const at::Tensor& indices, const at::Tensor& scores, double beta = 0.0);
  /// Current sampling probabilities p_i of `indices` (float64).
  at::Tensor probabilities(const at::Tensor& indices) const;
  int64_t size() const;
  double mix() const;
  /// Batches taken so far.
  int64_t taken() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

/// Per-example scores. upper-bound: K&F's bound for softmax cross-entropy,
/// ||softmax(z_i) - onehot(y_i)||_2, from the logits (no gradient flows).
SGDX_API at::Tensor upper_bound_scores(const at::Tensor& logits, const at::Tensor& targets);

/// mean_i(w_i.detach() * l_i): the unbiased importance-weighted loss (not
/// normalised by sum(w), which would be a different, biased estimator).
SGDX_API at::Tensor weighted_mean_loss(const at::Tensor& losses, const at::Tensor& weights);

/// Sampling-quality metric on M examples with exact gradient norms G and
/// sampling probabilities p (renormalised over the M):
///   Q = (V(uniform) - V(p)) / (V(uniform) - V(p*)),  V(q) = (1/M^2) sum G_i^2 / q_i - ||mean grad||^2,
/// p* proportional to G. 1 optimal, 0 uniform, < 0 worse (sgdx's definition).
SGDX_API double sampling_quality(const at::Tensor& grad_norms, const at::Tensor& probs);

/// K&F's tau (effective batch increase) from the scores of one batch:
/// [1 - sum (g_i - 1/B)^2 / sum g_i^2]^(-1/2), g = s / sum(s).
SGDX_API double effective_batch_increase(const at::Tensor& scores);

/// K&F presampling: importance steps only when tau exceeds (B + 3b) / (3b)
/// (the cost model backward = 2 forwards). Draw B = ratio * b examples
/// uniformly; if importance_step(), score them (forward, no grad) and select();
/// otherwise train on b of them uniformly. Feed every step's scores to update_tau.
class SGDX_API Presampler {
 public:
  Presampler(int64_t batch_size, int64_t ratio = 3, double mix = 0.0, double tau_ema = 0.9,
             uint64_t seed = 0);
  int64_t presample_size() const { return batch_size_ * ratio_; }
  bool importance_step() const { return tau_ > tau_threshold(); }
  double tau() const { return tau_; }
  double tau_threshold() const;
  /// From the B presampled scores, draws b positions with probabilities
  /// (1 - mix) s/sum(s) + mix/B; weights 1/(B p). Returns {positions (int64), weights (float32)}.
  std::pair<at::Tensor, at::Tensor> select(const at::Tensor& scores);
  /// Without a communicator, tau is the EMA of effective_batch_increase(scores).
  /// With one (collective: every rank calls it once per step), the EMA is fed the
  /// mean over ranks of each rank's effective batch increase, summed in rank order
  /// from an all-gather, so every rank holds the same tau bits and takes the same
  /// importance_step() decision. The mean of per-rank values (not tau of the
  /// concatenated scores) because each rank selects its b from its own B.
  void update_tau(const at::Tensor& scores);
  /// Joins a data-parallel group: update_tau() agrees across ranks, and select()
  /// draws rank r's independent stream rank_stream_seed(seed, r) (rank 0 draws what
  /// a one-process Presampler draws). Null leaves the group.
  void set_communicator(std::shared_ptr<sgdx::dist::Communicator> comm);
  /// Saves tau and the draw counter (the settings are checked on load, not restored).
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  int64_t batch_size_, ratio_;
  double mix_, tau_ema_, tau_ = 0;
  uint64_t seed_, calls_ = 0;
  std::shared_ptr<sgdx::dist::Communicator> comm_;
};

}  // namespace sgdx::data

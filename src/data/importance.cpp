#include "sgdx/data/importance.h"

#include "importance_batch.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>
#include <deque>
#include <mutex>

#include "sgdx/detail/philox.h"
#include "sgdx/dist/communicator.h"

#include <vector>

namespace sgdx::data {
namespace {

double unit(uint32_t hi, uint32_t lo) {
  return static_cast<double>(((uint64_t{hi} << 32) | lo) >> 11) * 0x1.0p-53;
}

void check_score(double s, int64_t index) {
  TORCH_CHECK(std::isfinite(s) && s >= 0, "importance sampling: score of example ", index,
              " must be finite and >= 0, got ", s);
}

}  // namespace

SumTree::SumTree(int64_t n, double initial)
    : n_(n), tree_(static_cast<size_t>(2 * std::max<int64_t>(n, 1)), 0.0) {
  TORCH_CHECK(n > 0, "SumTree: size must be positive, got ", n);
  check_score(initial, -1);
  std::vector<double> leaves(static_cast<size_t>(n), initial);
  assign_leaves(leaves.data());
}

void SumTree::assign_leaves(const double* values) {
  for (int64_t i = 0; i < n_; ++i) tree_[n_ + i] = values[i];
  for (int64_t k = n_ - 1; k >= 1; --k) tree_[k] = tree_[2 * k] + tree_[2 * k + 1];
  if (n_ == 1) tree_[1] = values[0];
}

double SumTree::get(int64_t i) const {
  return n_ == 1 ? tree_[1] : tree_[n_ + i];
}

void SumTree::set(int64_t i, double value) {
  TORCH_CHECK(i >= 0 && i < n_, "SumTree: index ", i, " out of range [0, ", n_, ")");
  check_score(value, i);
  if (n_ == 1) {
    tree_[1] = value;
    return;
  }
  int64_t k = n_ + i;
  tree_[k] = value;
  // Recompute (not add a delta) so sums never drift.
  for (k /= 2; k >= 1; k /= 2) tree_[k] = tree_[2 * k] + tree_[2 * k + 1];
}

int64_t SumTree::find(double u) const {
  if (n_ == 1) return 0;
  int64_t k = 1;
  while (k < n_) {
    const double left = tree_[2 * k], right = tree_[2 * k + 1];
    if (left > 0 && (u < left || !(right > 0))) {
      k = 2 * k;
    } else {
      u = std::min(u - left, std::nextafter(right, 0.0));
      k = 2 * k + 1;
    }
  }
  return k - n_;
}

uint64_t rank_stream_seed(uint64_t seed, int64_t rank) {
  TORCH_CHECK(rank >= 0, "rank_stream_seed: rank must be >= 0, got ", rank);
  return seed ^ (static_cast<uint64_t>(rank) * 0x9E3779B97F4A7C15ull);
}

double importance_probability(const SumTree& tree, double mix, int64_t index) {
  const double n = double(tree.size()), total = tree.total();
  if (!(total > 0)) return 1.0 / n;
  return (1.0 - mix) * tree.get(index) / total + mix / n;
}

ImportanceDraw importance_draw(const SumTree& tree, double mix, uint64_t seed, int64_t sequence,
                               int64_t position) {
  const auto seq = static_cast<uint64_t>(sequence);
  const auto r = sgdx::detail::philox4x32_10(static_cast<uint32_t>(position), static_cast<uint32_t>(seq),
                                             static_cast<uint32_t>(seq >> 32), 0x15A3C001u,
                                             static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double u_mix = unit(r.v[0], r.v[1]), u = unit(r.v[2], r.v[3]);
  const int64_t n = tree.size();
  const double total = tree.total();
  const int64_t i = u_mix < mix || !(total > 0)
                        ? std::min<int64_t>(static_cast<int64_t>(u * double(n)), n - 1)
                        : tree.find(u * total);
  return {i, importance_probability(tree, mix, i)};
}

void check_score_update(int64_t table_size, const int64_t* indices, const double* scores, int64_t count,
                        double beta, const char* who) {
  TORCH_CHECK(beta >= 0 && beta < 1, who, ": beta must be in [0, 1), got ", beta);
  for (const auto k : c10::irange(count)) {
    TORCH_CHECK(indices[k] >= 0 && indices[k] < table_size, who, ": index ", indices[k], " out of range [0, ",
                table_size, ")");
    check_score(scores[k], indices[k]);
  }
}

void apply_score_update(SumTree& tree, const int64_t* indices, const double* scores, int64_t count,
                        double beta, const char* who) {
  check_score_update(tree.size(), indices, scores, count, beta, who);
  // Every new value is computed from the table before any is written.
  std::vector<double> next(static_cast<size_t>(count));
  for (const auto k : c10::irange(count)) {
    next[k] = beta == 0 ? scores[k] : beta * tree.get(indices[k]) + (1 - beta) * scores[k];
  }
  for (const auto k : c10::irange(count)) tree.set(indices[k], next[k]);
}

struct ImportanceSampler::State {
  std::mutex mutex;
  SumTree tree;
  ImportanceSamplerOptions options;
  int64_t drawn = 0;        // sequence number of the next batch to draw
  int64_t taken = 0;        // sequence number of the next batch to take
  int64_t epoch_batch = 0;  // batches drawn in this epoch
  int64_t batches_per_epoch = 0;
  std::deque<ImportanceBatch> pending;
  State(int64_t n, ImportanceSamplerOptions o) : tree(n, o.initial_score), options(o) {}

  double prob(int64_t i) const { return importance_probability(tree, options.mix, i); }
};

ImportanceSampler::ImportanceSampler(int64_t size, ImportanceSamplerOptions options) {
  TORCH_CHECK(size > 0, "ImportanceSampler: size must be positive, got ", size);
  TORCH_CHECK(options.mix > 0 && options.mix <= 1, "ImportanceSampler: mix (eps) must be in (0, 1], got ",
              options.mix, " (eps = 0 would allow unbounded weights)");
  state_ = std::make_shared<State>(size, options);
}

void ImportanceSampler::reset(std::optional<size_t> new_size) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  TORCH_CHECK(!new_size || static_cast<int64_t>(*new_size) == state_->tree.size(),
              "ImportanceSampler: the dataset has ", new_size.value_or(0),
              " examples but the sampler was built for ", state_->tree.size());
  state_->epoch_batch = 0;
  // Batches drawn ahead in the last epoch and never taken are dropped.
  state_->drawn = state_->taken;
  state_->pending.clear();
}

std::optional<std::vector<size_t>> ImportanceSampler::next(size_t batch_size) {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  TORCH_CHECK(batch_size > 0, "ImportanceSampler: batch size must be positive");
  const int64_t n = s.tree.size();
  if (s.batches_per_epoch == 0) {
    s.batches_per_epoch = s.options.batches_per_epoch > 0
                              ? s.options.batches_per_epoch
                              : (n + int64_t(batch_size) - 1) / int64_t(batch_size);
  }
  if (s.epoch_batch >= s.batches_per_epoch) return std::nullopt;
  auto [batch, out] =
      detail::draw_importance_batch(s.tree, s.options.mix, s.options.seed, s.drawn, batch_size);
  s.pending.push_back(std::move(batch));
  ++s.drawn;
  ++s.epoch_batch;
  return out;
}

ImportanceBatch ImportanceSampler::take() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  TORCH_CHECK(!state_->pending.empty(),
              "ImportanceSampler::take: no drawn batch is waiting (take once per batch "
              "the loader yields)");
  auto b = std::move(state_->pending.front());
  state_->pending.pop_front();
  state_->taken = b.sequence + 1;
  return b;
}

void ImportanceSampler::update(const at::Tensor& indices, const at::Tensor& scores, double beta) {
  auto idx = indices.to(at::kLong).cpu().contiguous().reshape(-1);
  auto sc = scores.detach().to(at::kDouble).cpu().contiguous().reshape(-1);
  TORCH_CHECK(idx.numel() == sc.numel(), "ImportanceSampler::update: ", idx.numel(), " indices but ",
              sc.numel(), " scores");
  std::lock_guard<std::mutex> lock(state_->mutex);
  apply_score_update(state_->tree, idx.data_ptr<int64_t>(), sc.data_ptr<double>(), idx.numel(), beta,
                     "ImportanceSampler::update");
}

at::Tensor ImportanceSampler::probabilities(const at::Tensor& indices) const {
  auto idx = indices.to(at::kLong).cpu().contiguous().reshape(-1);
  auto out = at::empty({idx.numel()}, at::kDouble);
  std::lock_guard<std::mutex> lock(state_->mutex);
  for (const auto k : c10::irange(idx.numel())) {
    const int64_t i = idx.data_ptr<int64_t>()[k];
    TORCH_CHECK(i >= 0 && i < state_->tree.size(), "ImportanceSampler: index ", i, " out of range");
    out.data_ptr<double>()[k] = state_->prob(i);
  }
  return out;
}

int64_t ImportanceSampler::size() const {
  return state_->tree.size();
}
double ImportanceSampler::mix() const {
  return state_->options.mix;
}
int64_t ImportanceSampler::taken() const {
  return state_->taken;
}

void ImportanceSampler::save(torch::serialize::OutputArchive& archive) const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  const auto& s = *state_;
  const int64_t n = s.tree.size();
  auto leaves = at::empty({n}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) leaves.data_ptr<double>()[i] = s.tree.get(i);
  archive.write("scores", leaves, /*is_buffer=*/true);
  archive.write("mix", c10::IValue(s.options.mix));
  archive.write("seed", c10::IValue(static_cast<int64_t>(s.options.seed)));
  archive.write("next_sequence", c10::IValue(s.taken));
  // The epoch position of the next batch to take.
  archive.write("epoch_batch", c10::IValue(s.epoch_batch - static_cast<int64_t>(s.pending.size())));
  archive.write("batches_per_epoch", c10::IValue(s.batches_per_epoch));
}

void ImportanceSampler::load(torch::serialize::InputArchive& archive) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  auto& s = *state_;
  at::Tensor leaves;
  archive.read("scores", leaves, /*is_buffer=*/true);
  TORCH_CHECK(leaves.numel() == s.tree.size(), "ImportanceSampler::load: the checkpoint has ", leaves.numel(),
              " examples, this sampler ", s.tree.size());
  leaves = leaves.contiguous();
  s.tree.assign_leaves(leaves.data_ptr<double>());
  c10::IValue v;
  archive.read("mix", v);
  s.options.mix = v.toDouble();
  archive.read("seed", v);
  s.options.seed = static_cast<uint64_t>(v.toInt());
  archive.read("next_sequence", v);
  s.taken = s.drawn = v.toInt();
  archive.read("epoch_batch", v);
  s.epoch_batch = v.toInt();
  archive.read("batches_per_epoch", v);
  s.batches_per_epoch = v.toInt();
  s.pending.clear();
}

at::Tensor upper_bound_scores(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && logits.size(0) == targets.size(0),
              "upper_bound_scores: logits [B, C] and targets [B] expected, got ", logits.sizes(), " and ",
              targets.sizes());
  auto p = at::softmax(logits.detach(), 1);
  auto onehot = at::one_hot(targets.to(at::kLong), logits.size(1)).to(p.scalar_type());
  return at::linalg_vector_norm(p - onehot, 2, {1});
}

at::Tensor weighted_mean_loss(const at::Tensor& losses, const at::Tensor& weights) {
  TORCH_CHECK(losses.sizes() == weights.sizes(), "weighted_mean_loss: losses ", losses.sizes(),
              " and weights ", weights.sizes(), " differ");
  return (weights.detach().to(losses.scalar_type()).to(losses.device()) * losses).mean();
}

double sampling_quality(const at::Tensor& grad_norms, const at::Tensor& probs) {
  TORCH_CHECK(grad_norms.dim() == 1 && grad_norms.sizes() == probs.sizes() && grad_norms.numel() > 0,
              "sampling_quality: grad_norms and probs must be matching 1-D tensors");
  auto g = grad_norms.detach().to(at::kDouble).cpu();
  auto p = probs.detach().to(at::kDouble).cpu();
  TORCH_CHECK((p > 0).all().item<bool>(), "sampling_quality: every probability must be > 0");
  p = p / p.sum();
  const double m = double(g.numel());
  const double sq = g.pow(2).sum().item<double>();
  const double v_uniform = sq / m;  // (1/M^2) sum G^2 / (1/M)
  const double v_p = (g.pow(2) / p).sum().item<double>() / (m * m);
  const double v_opt = std::pow(g.sum().item<double>(), 2) / (m * m);  // p* = G / sum G
  const double gap = v_uniform - v_opt;
  return gap > 0 ? (v_uniform - v_p) / gap : 0.0;  // all norms equal: uniform is optimal
}

double effective_batch_increase(const at::Tensor& scores) {
  auto s = scores.detach().to(at::kDouble).cpu().reshape(-1);
  const double total = s.sum().item<double>();
  if (!(total > 0) || s.numel() < 2) return 1.0;
  auto g = s / total;
  const double b = double(s.numel());
  const double ratio = (g - 1.0 / b).pow(2).sum().item<double>() / g.pow(2).sum().item<double>();
  return 1.0 / std::sqrt(std::max(1.0 - ratio, 1e-12));
}

Presampler::Presampler(int64_t batch_size, int64_t ratio, double mix, double tau_ema, uint64_t seed)
    : batch_size_(batch_size), ratio_(ratio), mix_(mix), tau_ema_(tau_ema), seed_(seed) {
  TORCH_CHECK(batch_size > 0, "Presampler: batch size must be positive, got ", batch_size);
  TORCH_CHECK(ratio >= 2, "Presampler: presample ratio must be >= 2, got ", ratio);
  TORCH_CHECK(mix >= 0 && mix <= 1, "Presampler: mix must be in [0, 1], got ", mix);
  TORCH_CHECK(tau_ema >= 0 && tau_ema < 1, "Presampler: tau EMA factor must be in [0, 1), got ", tau_ema);
}

double Presampler::tau_threshold() const {
  const double B = double(presample_size()), b = double(batch_size_);
  return (B + 3 * b) / (3 * b);
}

std::pair<at::Tensor, at::Tensor> Presampler::select(const at::Tensor& scores) {
  auto s = scores.detach().to(at::kDouble).cpu().reshape(-1);
  const int64_t B = s.numel();
  TORCH_CHECK(B == presample_size(), "Presampler::select: expected ", presample_size(), " scores, got ", B);
  TORCH_CHECK(at::isfinite(s).all().item<bool>() && (s >= 0).all().item<bool>(),
              "Presampler::select: scores must be finite and >= 0");
  const double total = s.sum().item<double>();
  auto p =
      total > 0 ? (1 - mix_) * s / total + mix_ / double(B) : at::full({B}, 1.0 / double(B), at::kDouble);
  auto cdf = at::cumsum(p, 0);
  auto positions = at::empty({batch_size_}, at::kLong);
  auto weights = at::empty({batch_size_}, at::kFloat);
  p = p.contiguous();
  const double* c = cdf.data_ptr<double>();
  const double* pp = p.data_ptr<double>();
  auto* pos = positions.data_ptr<int64_t>();
  auto* wt = weights.data_ptr<float>();
  const uint64_t call = calls_++;
  const uint64_t seed = comm_ ? rank_stream_seed(seed_, comm_->rank()) : seed_;
  for (int64_t j = 0; j < batch_size_; ++j) {
    const auto r = sgdx::detail::philox4x32_10(
        static_cast<uint32_t>(j), static_cast<uint32_t>(call), static_cast<uint32_t>(call >> 32), 0x9E5A0001u,
        static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    const double u = unit(r.v[0], r.v[1]) * c[B - 1];
    int64_t k = std::upper_bound(c, c + B, u) - c;
    k = std::min(k, B - 1);
    while (k > 0 && pp[k] <= 0) --k;  // never a zero-probability item
    pos[j] = k;
    wt[j] = static_cast<float>(1.0 / (double(B) * pp[k]));
  }
  return {positions, weights};
}

void Presampler::update_tau(const at::Tensor& scores) {
  double increase = effective_batch_increase(scores);
  if (comm_ && comm_->world_size() > 1) {
    // Summed here in rank order rather than all-reduced: the same bits on every rank.
    const auto all = comm_->all_gather(at::full({1}, increase, at::kDouble)).contiguous();
    const double* v = all.data_ptr<double>();
    double sum = 0;
    for (const auto r : c10::irange(all.numel())) sum += v[r];
    increase = sum / double(all.numel());
  }
  tau_ = tau_ema_ * tau_ + (1 - tau_ema_) * increase;
}

void Presampler::set_communicator(std::shared_ptr<sgdx::dist::Communicator> comm) {
  comm_ = std::move(comm);
}

void Presampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("presampler/settings",
                c10::IValue(std::vector<double>{double(batch_size_), double(ratio_), mix_, tau_ema_}));
  archive.write("presampler/seed", c10::IValue(static_cast<int64_t>(seed_)));
  archive.write("presampler/tau", c10::IValue(tau_));
  archive.write("presampler/calls", c10::IValue(static_cast<int64_t>(calls_)));
}

void Presampler::load(torch::serialize::InputArchive& archive) {
  c10::IValue settings, seed, tau, calls;
  archive.read("presampler/settings", settings);
  archive.read("presampler/seed", seed);
  archive.read("presampler/tau", tau);
  archive.read("presampler/calls", calls);
  const std::vector<double> mine{double(batch_size_), double(ratio_), mix_, tau_ema_};
  const auto saved = settings.toDoubleVector();
  TORCH_CHECK(saved == mine, "Presampler::load: the saved settings (batch, ratio, mix, tau EMA) ", saved,
              " differ from this presampler's ", mine);
  TORCH_CHECK(static_cast<uint64_t>(seed.toInt()) == seed_, "Presampler::load: the saved seed ",
              static_cast<uint64_t>(seed.toInt()), " differs from this presampler's ", seed_);
  TORCH_CHECK(calls.toInt() >= 0, "Presampler::load: negative draw counter ", calls.toInt());
  tau_ = tau.toDouble();
  calls_ = static_cast<uint64_t>(calls.toInt());
}

}  // namespace sgdx::data

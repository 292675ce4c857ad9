#include "sgdx/data/distributed.h"

#include "importance_batch.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <string>

#include "sgdx/detail/philox.h"
#include "sgdx/dist/communicator.h"

namespace sgdx::data {
namespace {

constexpr const char* kImp = "DistributedImportanceSampler";

c10::IValue read_value(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue v;
  archive.read(key, v);
  return v;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

/// Every rank's (indices, scores) of one batch's update, in rank order.
struct GatheredUpdate {
  double beta = 0;
  std::vector<int64_t> offsets;  // rank r's entries are [offsets[r], offsets[r + 1])
  std::vector<int64_t> indices;
  std::vector<double> scores;
};

}  // namespace

// ---------------------------------------------------------------- importance

struct DistributedImportanceSampler::State {
  std::mutex mutex;
  std::shared_ptr<sgdx::dist::Communicator> comm;
  int64_t rank = 0, world = 1;
  DistributedImportanceOptions options;
  uint64_t stream_seed = 0;
  // `front` is the table of the latest draw; `base` the table of the oldest untaken
  // batch (what save() writes, so a load redraws every untaken batch exactly).
  SumTree front, base;
  int64_t front_applied = 0, base_applied = 0;  // batches whose updates each table holds
  std::map<int64_t, GatheredUpdate> updates;    // received, not yet in both tables
  int64_t updated = 0;                          // the next batch whose update is expected
  int64_t taken = 0;
  std::deque<ImportanceBatch> pending;  // drawn, not taken; the first `handed` went out through next()
  size_t handed = 0;
  int64_t epoch_batch = 0, batches_per_epoch = 0;

  State(int64_t n, DistributedImportanceOptions o)
      : options(o), front(n, o.initial_score), base(n, o.initial_score) {}

  int64_t needed(int64_t sequence) const { return std::max<int64_t>(0, sequence - options.lag); }

  void apply(SumTree& tree, int64_t& applied) {
    const auto& u = updates.at(applied);
    for (const auto r : c10::irange(u.offsets.size() - 1)) {
      const int64_t lo = u.offsets[r];
      apply_score_update(tree, u.indices.data() + lo, u.scores.data() + lo, u.offsets[r + 1] - lo, u.beta,
                         "DistributedImportanceSampler::update");
    }
    ++applied;
  }

  void prune() { updates.erase(updates.begin(), updates.lower_bound(base_applied)); }
};

DistributedImportanceSampler::DistributedImportanceSampler(int64_t size,
                                                           std::shared_ptr<sgdx::dist::Communicator> comm,
                                                           DistributedImportanceOptions options) {
  TORCH_CHECK(size > 0, kImp, ": size must be positive, got ", size);
  // Indices travel as float64 in the all-gather.
  TORCH_CHECK(size <= (int64_t{1} << 53), kImp, ": size must be <= 2^53, got ", size);
  TORCH_CHECK(comm != nullptr, kImp, ": needs a communicator (sgdx::dist::single_process() for one process)");
  TORCH_CHECK(options.mix > 0 && options.mix <= 1, kImp, ": mix (eps) must be in (0, 1], got ", options.mix);
  TORCH_CHECK(options.lag >= 0, kImp, ": lag must be >= 0, got ", options.lag);
  state_ = std::make_shared<State>(size, options);
  state_->rank = comm->rank();
  state_->world = comm->world_size();
  state_->stream_seed = rank_stream_seed(options.seed, state_->rank);
  state_->comm = std::move(comm);
}

void DistributedImportanceSampler::reset(std::optional<size_t> new_size) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  TORCH_CHECK(!new_size || static_cast<int64_t>(*new_size) == state_->front.size(), kImp,
              ": the dataset has ", new_size.value_or(0), " examples but the sampler was built for ",
              state_->front.size());
  state_->epoch_batch = 0;
  // The loader dropped what it drew ahead: next() hands those batches out again.
  state_->handed = 0;
}

std::optional<std::vector<size_t>> DistributedImportanceSampler::next(size_t batch_size) {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  TORCH_CHECK(batch_size > 0, kImp, ": batch size must be positive");
  const int64_t n = s.front.size(), b = static_cast<int64_t>(batch_size);
  if (s.batches_per_epoch == 0) {
    s.batches_per_epoch =
        s.options.batches_per_epoch > 0 ? s.options.batches_per_epoch : ceil_div(n, s.world * b);
  }
  if (s.epoch_batch >= s.batches_per_epoch) return std::nullopt;
  if (s.handed < s.pending.size()) {
    const auto& again = s.pending[s.handed];
    TORCH_CHECK(static_cast<int64_t>(again.indices.size()) == b, kImp, ": batch ", again.sequence,
                " was drawn with batch size ", again.indices.size(), " and is asked again with ", b);
    ++s.handed;
    ++s.epoch_batch;
    return std::vector<size_t>(again.indices.begin(), again.indices.end());
  }
  const int64_t sequence = s.taken + static_cast<int64_t>(s.pending.size());
  const int64_t need = s.needed(sequence);
  while (s.front_applied < need) {
    TORCH_CHECK(s.updates.count(s.front_applied) > 0, kImp, ": batch ", sequence,
                " must be drawn from the table holding the updates of batches 0..", need - 1, " (lag ",
                s.options.lag, ") but batch ", s.front_applied,
                "'s update has not arrived. A loader drawing ahead of training needs lag >= the batches it "
                "draws ahead; here lag >= ",
                sequence - s.updated, " (or call update() once for every taken batch)");
    s.apply(s.front, s.front_applied);
  }
  auto [batch, out] =
      detail::draw_importance_batch(s.front, s.options.mix, s.stream_seed, sequence, batch_size);
  s.pending.push_back(std::move(batch));
  ++s.handed;
  ++s.epoch_batch;
  return out;
}

ImportanceBatch DistributedImportanceSampler::take() {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  TORCH_CHECK(s.handed > 0, kImp,
              "::take: no drawn batch is waiting (take once per batch the loader yields)");
  auto batch = std::move(s.pending.front());
  s.pending.pop_front();
  --s.handed;
  s.taken = batch.sequence + 1;
  const int64_t target = std::min(s.needed(s.taken), s.front_applied);
  while (s.base_applied < target) s.apply(s.base, s.base_applied);
  s.prune();
  return batch;
}

void DistributedImportanceSampler::update(const ImportanceBatch& batch, const at::Tensor& scores,
                                          double beta) {
  gather_update(batch.sequence, at::tensor(c10::ArrayRef<int64_t>(batch.indices), at::kLong), scores, beta);
}

void DistributedImportanceSampler::update(const at::Tensor& indices, const at::Tensor& scores, double beta) {
  gather_update(std::nullopt, indices, scores, beta);
}

void DistributedImportanceSampler::gather_update(std::optional<int64_t> batch_sequence,
                                                 const at::Tensor& indices, const at::Tensor& scores,
                                                 double beta) {
  auto& s = *state_;
  const auto idx = indices.to(at::kLong).cpu().contiguous().reshape(-1);
  const auto sc = scores.detach().to(at::kDouble).cpu().contiguous().reshape(-1);
  const int64_t count = idx.numel();
  int64_t sequence = 0;
  std::string problem;  // this rank's reason to refuse, raised after every rank has said whether it agrees
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    sequence = s.updated;
    if (batch_sequence && *batch_sequence != sequence) {
      problem = std::string(kImp) + "::update: updates come once per batch in batch order; expected batch " +
                std::to_string(sequence) + "'s, got batch " + std::to_string(*batch_sequence) + "'s";
    } else if (sequence >= s.taken) {
      problem = std::string(kImp) + "::update: batch " + std::to_string(sequence) +
                " has not been taken yet (update once per taken batch)";
    }
  }
  if (problem.empty() && count != sc.numel()) {
    problem = std::string(kImp) + "::update: " + std::to_string(count) + " indices but " +
              std::to_string(sc.numel()) + " scores";
  }
  if (problem.empty()) {
    try {
      check_score_update(s.front.size(), idx.data_ptr<int64_t>(), sc.data_ptr<double>(), count, beta,
                         "DistributedImportanceSampler::update");
    } catch (const c10::Error& e) {
      problem = e.what_without_backtrace();
    }
  }
  // One small gather first so that a refusal on any rank is seen by all (no rank
  // is left waiting in the second) and the payload's padded length is agreed.
  const auto header =
      s.comm
          ->all_gather(
              at::tensor({double(sequence), double(count), beta, problem.empty() ? 1.0 : 0.0}, at::kDouble))
          .contiguous();
  const auto* h = header.data_ptr<double>();
  TORCH_CHECK(problem.empty(), problem);
  int64_t max_count = 0;
  for (const auto r : c10::irange(s.world)) {
    const double* hr = h + 4 * r;
    TORCH_CHECK(hr[3] == 1.0, kImp, "::update: rank ", r, " refused its update (its error says why); ",
                "no rank applied this one");
    TORCH_CHECK(hr[0] == double(sequence), kImp, "::update: rank ", r, " sent the update of batch ",
                int64_t(hr[0]), ", this rank (", s.rank, ") of batch ", sequence,
                "; every rank updates once per batch");
    TORCH_CHECK(hr[2] == beta, kImp, "::update: rank ", r, " used beta ", hr[2], ", this rank (", s.rank,
                ") ", beta, "; beta must agree");
    max_count = std::max(max_count, static_cast<int64_t>(hr[1]));
  }
  GatheredUpdate u;
  u.beta = beta;
  u.offsets.assign(static_cast<size_t>(s.world) + 1, 0);
  if (max_count > 0) {
    auto payload = at::zeros({2, max_count}, at::kDouble);
    payload[0].narrow(0, 0, count).copy_(idx.to(at::kDouble));
    payload[1].narrow(0, 0, count).copy_(sc);
    const auto all = s.comm->all_gather(payload).contiguous();
    const auto* p = all.data_ptr<double>();
    for (const auto r : c10::irange(s.world)) {
      const auto c = static_cast<int64_t>(h[4 * r + 1]);
      const double* pr = p + 2 * max_count * r;
      for (const auto k : c10::irange(c)) {
        u.indices.push_back(static_cast<int64_t>(pr[k]));
        u.scores.push_back(pr[max_count + k]);
      }
      u.offsets[r + 1] = u.offsets[r] + c;
    }
  }
  std::lock_guard<std::mutex> lock(s.mutex);
  s.updates.emplace(sequence, std::move(u));
  ++s.updated;
}

at::Tensor DistributedImportanceSampler::probabilities(const at::Tensor& indices) const {
  auto idx = indices.to(at::kLong).cpu().contiguous().reshape(-1);
  auto out = at::empty({idx.numel()}, at::kDouble);
  std::lock_guard<std::mutex> lock(state_->mutex);
  const auto& tree = state_->front;
  for (const auto k : c10::irange(idx.numel())) {
    const int64_t i = idx.data_ptr<int64_t>()[k];
    TORCH_CHECK(i >= 0 && i < tree.size(), kImp, ": index ", i, " out of range [0, ", tree.size(), ")");
    out.data_ptr<double>()[k] = importance_probability(tree, state_->options.mix, i);
  }
  return out;
}

namespace {
at::Tensor leaves_of(const SumTree& tree) {
  auto out = at::empty({tree.size()}, at::kDouble);
  for (const auto i : c10::irange(tree.size())) out.data_ptr<double>()[i] = tree.get(i);
  return out;
}
}  // namespace

at::Tensor DistributedImportanceSampler::scores() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return leaves_of(state_->front);
}
int64_t DistributedImportanceSampler::applied_updates() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->front_applied;
}
int64_t DistributedImportanceSampler::size() const {
  return state_->front.size();
}
int64_t DistributedImportanceSampler::taken() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->taken;
}
int64_t DistributedImportanceSampler::lag() const {
  return state_->options.lag;
}
const std::shared_ptr<sgdx::dist::Communicator>& DistributedImportanceSampler::communicator() const {
  return state_->comm;
}

void DistributedImportanceSampler::save(torch::serialize::OutputArchive& archive) const {
  const auto& s = *state_;
  std::lock_guard<std::mutex> lock(state_->mutex);
  archive.write("dis/scores", leaves_of(s.base), /*is_buffer=*/true);
  archive.write("dis/settings", c10::IValue(std::vector<int64_t>{s.front.size(), s.world, s.options.lag,
                                                                 static_cast<int64_t>(s.options.seed)}));
  archive.write("dis/mix", c10::IValue(s.options.mix));
  archive.write("dis/applied", c10::IValue(s.base_applied));
  archive.write("dis/taken", c10::IValue(s.taken));
  // The epoch position of the next batch to take.
  archive.write("dis/epoch_batch", c10::IValue(s.epoch_batch - static_cast<int64_t>(s.handed)));
  archive.write("dis/batches_per_epoch", c10::IValue(s.batches_per_epoch));
  // The updates after the saved table, batch by batch, rank by rank.
  std::vector<int64_t> counts, indices;
  std::vector<double> betas, scores;
  for (const auto& [sequence, u] : s.updates) {
    if (sequence < s.base_applied) continue;
    betas.push_back(u.beta);
    for (const auto r : c10::irange(s.world)) counts.push_back(u.offsets[r + 1] - u.offsets[r]);
    indices.insert(indices.end(), u.indices.begin(), u.indices.end());
    scores.insert(scores.end(), u.scores.begin(), u.scores.end());
  }
  archive.write("dis/update_counts", at::tensor(c10::ArrayRef<int64_t>(counts), at::kLong), true);
  archive.write("dis/update_betas", at::tensor(c10::ArrayRef<double>(betas), at::kDouble), true);
  archive.write("dis/update_indices", at::tensor(c10::ArrayRef<int64_t>(indices), at::kLong), true);
  archive.write("dis/update_scores", at::tensor(c10::ArrayRef<double>(scores), at::kDouble), true);
}

void DistributedImportanceSampler::load(torch::serialize::InputArchive& archive) {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  const auto settings = read_value(archive, "dis/settings").toIntVector();
  TORCH_CHECK(settings.size() == 4, kImp, "::load: malformed settings ", settings);
  TORCH_CHECK(settings[0] == s.front.size(), kImp, "::load: the checkpoint has ", settings[0],
              " examples, this sampler ", s.front.size());
  TORCH_CHECK(settings[1] == s.world, kImp, "::load: the checkpoint was saved by a world of ", settings[1],
              " ranks, this group has ", s.world, " (changing the world size is not supported)");
  TORCH_CHECK(settings[2] == s.options.lag, kImp, "::load: the checkpoint has lag ", settings[2],
              ", this sampler ", s.options.lag);
  TORCH_CHECK(static_cast<uint64_t>(settings[3]) == s.options.seed, kImp, "::load: the checkpoint has seed ",
              static_cast<uint64_t>(settings[3]), ", this sampler ", s.options.seed);
  const double mix = read_value(archive, "dis/mix").toDouble();
  TORCH_CHECK(mix == s.options.mix, kImp, "::load: the checkpoint has mix ", mix, ", this sampler ",
              s.options.mix);
  at::Tensor leaves, counts, betas, indices, scores;
  archive.read("dis/scores", leaves, true);
  archive.read("dis/update_counts", counts, true);
  archive.read("dis/update_betas", betas, true);
  archive.read("dis/update_indices", indices, true);
  archive.read("dis/update_scores", scores, true);
  const int64_t applied = read_value(archive, "dis/applied").toInt();
  const int64_t n_updates = betas.numel();
  TORCH_CHECK(leaves.numel() == s.front.size() && counts.numel() == n_updates * s.world &&
                  indices.numel() == scores.numel() && indices.numel() == counts.sum().item<int64_t>(),
              kImp, "::load: inconsistent checkpoint (", leaves.numel(), " scores, ", n_updates, " updates, ",
              counts.numel(), " counts, ", indices.numel(), " update entries)");
  std::map<int64_t, GatheredUpdate> updates;
  const auto* c = counts.data_ptr<int64_t>();
  const auto* ip = indices.data_ptr<int64_t>();
  const auto* sp = scores.data_ptr<double>();
  int64_t at_entry = 0;
  for (const auto k : c10::irange(n_updates)) {
    GatheredUpdate u;
    u.beta = betas.data_ptr<double>()[k];
    u.offsets.assign(static_cast<size_t>(s.world) + 1, 0);
    for (const auto r : c10::irange(s.world)) u.offsets[r + 1] = u.offsets[r] + c[k * s.world + r];
    u.indices.assign(ip + at_entry, ip + at_entry + u.offsets.back());
    u.scores.assign(sp + at_entry, sp + at_entry + u.offsets.back());
    check_score_update(s.front.size(), u.indices.data(), u.scores.data(), u.offsets.back(), u.beta,
                       "DistributedImportanceSampler::load");
    at_entry += u.offsets.back();
    updates.emplace(applied + k, std::move(u));
  }
  leaves = leaves.contiguous();
  s.base.assign_leaves(leaves.data_ptr<double>());
  s.front = s.base;
  s.base_applied = s.front_applied = applied;
  s.updates = std::move(updates);
  s.updated = applied + n_updates;
  s.taken = read_value(archive, "dis/taken").toInt();
  s.epoch_batch = read_value(archive, "dis/epoch_batch").toInt();
  s.batches_per_epoch = read_value(archive, "dis/batches_per_epoch").toInt();
  s.pending.clear();
  s.handed = 0;
}

// --------------------------------------------------------------- temperature

struct DistributedTemperatureSampler::State {
  TemperatureSampler sampler;
  std::shared_ptr<sgdx::dist::Communicator> comm;
  int64_t world = 1;
  int64_t requested_batches_per_epoch = 0, batches_per_epoch = 0, epoch_batch = 0;
};

DistributedTemperatureSampler::DistributedTemperatureSampler(const at::Tensor& group_ids,
                                                             TemperatureSchedule schedule,
                                                             std::shared_ptr<sgdx::dist::Communicator> comm,
                                                             uint64_t seed, int64_t batches_per_epoch,
                                                             int64_t num_groups) {
  TORCH_CHECK(comm != nullptr, "DistributedTemperatureSampler: needs a communicator");
  // The inner sampler never ends an epoch: epochs are counted here, per rank.
  const int rank = comm->rank(), world = comm->world_size();
  state_ =
      std::make_shared<State>(State{TemperatureSampler(group_ids, std::move(schedule), seed,
                                                       std::numeric_limits<int64_t>::max(), num_groups, rank),
                                    std::move(comm), world, batches_per_epoch});
}

void DistributedTemperatureSampler::reset(std::optional<size_t> new_size) {
  state_->sampler.reset(new_size);
  state_->epoch_batch = 0;
}

std::optional<std::vector<size_t>> DistributedTemperatureSampler::next(size_t batch_size) {
  auto& s = *state_;
  TORCH_CHECK(batch_size > 0, "DistributedTemperatureSampler: batch size must be positive");
  if (s.batches_per_epoch == 0) {
    s.batches_per_epoch = s.requested_batches_per_epoch > 0
                              ? s.requested_batches_per_epoch
                              : ceil_div(s.sampler.group_ids().numel(), s.world * int64_t(batch_size));
  }
  if (s.epoch_batch >= s.batches_per_epoch) return std::nullopt;
  ++s.epoch_batch;
  return s.sampler.next(batch_size);
}

void DistributedTemperatureSampler::save(torch::serialize::OutputArchive& archive) const {
  const auto& s = *state_;
  s.sampler.save(archive);
  archive.write("dts/world", c10::IValue(s.world));
  archive.write("dts/epoch_batch", c10::IValue(s.epoch_batch));
  archive.write("dts/batches_per_epoch", c10::IValue(s.batches_per_epoch));
}

void DistributedTemperatureSampler::load(torch::serialize::InputArchive& archive) {
  auto& s = *state_;
  const int64_t world = read_value(archive, "dts/world").toInt();
  TORCH_CHECK(world == s.world,
              "DistributedTemperatureSampler::load: the checkpoint was saved by a world of ", world,
              " ranks, this group has ", s.world);
  s.sampler.load(archive);
  s.epoch_batch = read_value(archive, "dts/epoch_batch").toInt();
  s.batches_per_epoch = read_value(archive, "dts/batches_per_epoch").toInt();
}

int64_t DistributedTemperatureSampler::step() const {
  return state_->sampler.step();
}
double DistributedTemperatureSampler::current_tau() const {
  return state_->sampler.current_tau();
}

void DistributedTemperatureSampler::check_agreement() const {
  const auto& s = *state_;
  const auto all =
      s.comm->all_gather(at::tensor({double(s.sampler.step()), s.sampler.current_tau()}, at::kDouble))
          .contiguous();
  const auto* v = all.data_ptr<double>();
  for (const auto r : c10::irange(s.world)) {
    TORCH_CHECK(v[2 * r] == v[0] && v[2 * r + 1] == v[1], "DistributedTemperatureSampler: rank ", r,
                " is at step ", int64_t(v[2 * r]), " (tau ", v[2 * r + 1], "), rank 0 at step ",
                int64_t(v[0]), " (tau ", v[1], "); every rank must draw one batch per step");
  }
}

// --------------------------------------------------------------------- shard

DistributedShardSampler::DistributedShardSampler(int64_t size, int64_t rank, int64_t world_size,
                                                 uint64_t seed, bool shuffle, bool drop_last)
    : size_(size), rank_(rank), world_(world_size), seed_(seed), shuffle_(shuffle), drop_last_(drop_last) {
  TORCH_CHECK(size > 0, "DistributedShardSampler: size must be positive, got ", size);
  TORCH_CHECK(world_size > 0, "DistributedShardSampler: world size must be positive, got ", world_size);
  TORCH_CHECK(rank >= 0 && rank < world_size, "DistributedShardSampler: rank ", rank, " out of range [0, ",
              world_size, ")");
  TORCH_CHECK(!drop_last || size >= world_size, "DistributedShardSampler: drop_last with ", size,
              " examples and ", world_size, " ranks leaves every rank empty");
  populate();
}

DistributedShardSampler::DistributedShardSampler(int64_t size, const sgdx::dist::Communicator& comm,
                                                 uint64_t seed, bool shuffle, bool drop_last)
    : DistributedShardSampler(size, comm.rank(), comm.world_size(), seed, shuffle, drop_last) {}

int64_t DistributedShardSampler::per_rank() const {
  return drop_last_ ? size_ / world_ : ceil_div(size_, world_);
}

void DistributedShardSampler::populate() {
  std::vector<int64_t> perm(static_cast<size_t>(size_));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (shuffle_) {
    // Fisher-Yates; draw k picks from [0, k] with the 53-bit uniform of Philox
    // counter (k, epoch) under key seed (bias below 2^-53 * N, negligible).
    const auto epoch = static_cast<uint64_t>(epoch_);
    for (int64_t k = size_ - 1; k > 0; --k) {
      const auto uk = static_cast<uint64_t>(k);
      const auto r =
          sgdx::detail::philox4x32_10(static_cast<uint32_t>(uk), static_cast<uint32_t>(uk >> 32),
                                      static_cast<uint32_t>(epoch), 0x5A4D0001u ^ uint32_t(epoch >> 32),
                                      static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32));
      const double u = static_cast<double>(((uint64_t{r.v[0]} << 32) | r.v[1]) >> 11) * 0x1.0p-53;
      const int64_t j = std::min<int64_t>(static_cast<int64_t>(u * double(k + 1)), k);
      std::swap(perm[k], perm[j]);
    }
  }
  const int64_t m = per_rank();
  indices_.resize(static_cast<size_t>(m));
  // Position rank + world * t of the permutation, wrapped round (the padding).
  for (const auto t : c10::irange(m)) indices_[t] = perm[(rank_ + world_ * t) % size_];
}

void DistributedShardSampler::reset(std::optional<size_t> new_size) {
  if (new_size && static_cast<int64_t>(*new_size) != size_) {
    TORCH_CHECK(!drop_last_ || static_cast<int64_t>(*new_size) >= world_,
                "DistributedShardSampler: drop_last with ", *new_size, " examples and ", world_,
                " ranks leaves every rank empty");
    TORCH_CHECK(*new_size > 0, "DistributedShardSampler: size must be positive, got ", *new_size);
    size_ = static_cast<int64_t>(*new_size);
  }
  position_ = 0;
  populate();
}

std::optional<std::vector<size_t>> DistributedShardSampler::next(size_t batch_size) {
  TORCH_CHECK(batch_size > 0, "DistributedShardSampler: batch size must be positive");
  const auto m = static_cast<int64_t>(indices_.size());
  if (position_ >= m) return std::nullopt;
  const int64_t end = std::min<int64_t>(m, position_ + static_cast<int64_t>(batch_size));
  std::vector<size_t> out(indices_.begin() + position_, indices_.begin() + end);
  position_ = end;
  return out;
}

void DistributedShardSampler::set_epoch(int64_t epoch) {
  TORCH_CHECK(epoch >= 0, "DistributedShardSampler: epoch must be >= 0, got ", epoch);
  epoch_ = epoch;
}

void DistributedShardSampler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("dss/settings", c10::IValue(std::vector<int64_t>{size_, world_, static_cast<int64_t>(seed_),
                                                                 int64_t(shuffle_), int64_t(drop_last_)}));
  archive.write("dss/epoch", c10::IValue(epoch_));
  archive.write("dss/position", c10::IValue(position_));
}

void DistributedShardSampler::load(torch::serialize::InputArchive& archive) {
  const auto saved = read_value(archive, "dss/settings").toIntVector();
  const std::vector<int64_t> mine{size_, world_, static_cast<int64_t>(seed_), int64_t(shuffle_),
                                  int64_t(drop_last_)};
  TORCH_CHECK(saved == mine,
              "DistributedShardSampler::load: the saved settings (size, world, seed, shuffle, ",
              "drop_last) ", saved, " differ from this sampler's ", mine);
  epoch_ = read_value(archive, "dss/epoch").toInt();
  const int64_t position = read_value(archive, "dss/position").toInt();
  populate();
  TORCH_CHECK(position >= 0 && position <= static_cast<int64_t>(indices_.size()),
              "DistributedShardSampler::load: position ", position, " out of range [0, ", indices_.size(),
              "]");
  position_ = position;
}

}  // namespace sgdx::data

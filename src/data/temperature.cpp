#include "sgdx/data/temperature.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/irange.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "sgdx/data/importance.h"
#include "sgdx/detail/philox.h"

namespace sgdx::data {
namespace {

void check_sizes(const std::vector<int64_t>& sizes) {
  TORCH_CHECK(!sizes.empty(), "temperature sampling: no groups");
  for (const auto k : c10::irange(sizes.size())) {
    TORCH_CHECK(sizes[k] > 0, "temperature sampling: group ", k, " is empty (size ", sizes[k], ")");
  }
}

void check_tau(double tau) {
  TORCH_CHECK(tau > 0 && std::isfinite(tau), "temperature sampling: tau must be > 0 and finite, got ", tau);
}

std::vector<double> probs(const std::vector<int64_t>& sizes, double tau) {
  check_sizes(sizes);
  check_tau(tau);
  // n^(1/tau) scaled by the largest group for range safety.
  const double nmax = static_cast<double>(*std::max_element(sizes.begin(), sizes.end()));
  std::vector<double> p(sizes.size());
  double total = 0;
  for (const auto k : c10::irange(sizes.size())) total += p[k] = std::pow(double(sizes[k]) / nmax, 1.0 / tau);
  for (auto& v : p) v /= total;
  return p;
}

at::Tensor to_tensor(const std::vector<double>& v) {
  return at::tensor(c10::ArrayRef<double>(v), at::TensorOptions().dtype(at::kDouble));
}

// A uniform double in [0, 1) from two 32-bit words.
double unit(uint32_t hi, uint32_t lo) {
  return static_cast<double>(((uint64_t{hi} << 32) | lo) >> 11) * 0x1.0p-53;
}

}  // namespace

at::Tensor temperature_probs(const std::vector<int64_t>& sizes, double tau) {
  return to_tensor(probs(sizes, tau));
}

at::Tensor scalarization_weights(const std::vector<int64_t>& sizes, double tau) {
  const auto p = probs(sizes, tau), p1 = probs(sizes, 1.0);
  std::vector<double> w(p.size());
  for (const auto k : c10::irange(p.size())) w[k] = p[k] / p1[k];
  return to_tensor(w);
}

double variance_factor(const std::vector<int64_t>& sizes, double tau) {
  const auto p = probs(sizes, tau), p1 = probs(sizes, 1.0);
  double f = 0;
  for (const auto k : c10::irange(p.size())) f += p[k] * p[k] / p1[k];
  return f;
}

std::string temperature_summary(const std::vector<int64_t>& sizes, double tau) {
  const auto p = probs(sizes, tau), p1 = probs(sizes, 1.0);
  std::string s = fmt::format("{:>6} {:>10} {:>10} {:>10} {:>12}\n", "group", "size", "p(k;1)",
                              fmt::format("p(k;{:g})", tau), "weight w_k");
  for (const auto k : c10::irange(sizes.size()))
    s += fmt::format("{:>6} {:>10} {:>10.4f} {:>10.4f} {:>12.4g}\n", k, sizes[k], p1[k], p[k], p[k] / p1[k]);
  s += fmt::format(
      "F({:g}) = {:.4g} (scalarization's gradient noise relative to temperature sampling; 1 = equal)\n", tau,
      variance_factor(sizes, tau));
  return s;
}

TemperatureSchedule::TemperatureSchedule(std::vector<std::pair<int64_t, double>> points)
    : points_(std::move(points)) {
  TORCH_CHECK(!points_.empty(), "temperature schedule: needs at least one (step, tau) pair");
  TORCH_CHECK(points_.front().first == 0,
              "temperature schedule: the first pair must start at step 0, got step ", points_.front().first);
  for (const auto i : c10::irange(points_.size())) {
    check_tau(points_[i].second);
    if (i > 0) {
      TORCH_CHECK(points_[i].first > points_[i - 1].first, "temperature schedule: steps must increase, got ",
                  points_[i - 1].first, " then ", points_[i].first);
    }
  }
}

TemperatureSchedule TemperatureSchedule::constant(double tau) {
  return TemperatureSchedule({{0, tau}});
}

TemperatureSchedule TemperatureSchedule::cooldown(int64_t total_steps, double tau_high, double tau_low) {
  TORCH_CHECK(total_steps >= 2, "cooldown: total_steps must be >= 2, got ", total_steps);
  return TemperatureSchedule({{0, tau_high}, {total_steps / 2, tau_low}});
}

double TemperatureSchedule::at(int64_t step) const {
  auto it = std::upper_bound(points_.begin(), points_.end(), step,
                             [](int64_t s, const std::pair<int64_t, double>& p) { return s < p.first; });
  return std::prev(it)->second;
}

std::vector<int64_t> group_sizes(const at::Tensor& group_ids, int64_t num_groups) {
  TORCH_CHECK(group_ids.defined() && group_ids.dim() == 1 && !at::isFloatingType(group_ids.scalar_type()),
              "temperature sampling: group ids must be a 1-D integer tensor");
  TORCH_CHECK(group_ids.numel() > 0, "temperature sampling: no examples");
  auto ids = group_ids.to(at::kLong).cpu();
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0, "temperature sampling: group ids must be >= 0, got ", lo);
  if (num_groups <= 0) num_groups = hi + 1;
  TORCH_CHECK(hi < num_groups, "temperature sampling: group id ", hi, " >= num_groups ", num_groups);
  auto counts = at::bincount(ids, {}, num_groups);
  std::vector<int64_t> sizes(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + num_groups);
  check_sizes(sizes);
  return sizes;
}

struct TemperatureSampler::State {
  at::Tensor group_ids;
  std::vector<int64_t> sizes, offsets, members;  // members grouped: group k at [offsets[k], offsets[k+1])
  TemperatureSchedule schedule = TemperatureSchedule::constant(1.0);
  uint64_t seed = 0, stream_seed = 0;
  int64_t stream = 0;
  int64_t requested_batches_per_epoch = 0, batches_per_epoch = 0;
  int64_t step = 0, epoch_batch = 0;
  double cached_tau = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> cdf;

  const std::vector<double>& cdf_for(double tau) {
    if (tau != cached_tau) {
      const auto p = probs(sizes, tau);
      cdf.resize(p.size());
      std::partial_sum(p.begin(), p.end(), cdf.begin());
      cached_tau = tau;
    }
    return cdf;
  }
};

TemperatureSampler::TemperatureSampler(const at::Tensor& group_ids, TemperatureSchedule schedule,
                                       uint64_t seed, int64_t batches_per_epoch, int64_t num_groups,
                                       int64_t stream)
    : state_(std::make_shared<State>()) {
  TORCH_CHECK(stream >= 0, "TemperatureSampler: stream must be >= 0, got ", stream);
  auto& s = *state_;
  s.sizes = group_sizes(group_ids, num_groups);
  s.group_ids = group_ids.to(at::kLong).cpu().contiguous();
  s.schedule = std::move(schedule);
  s.seed = seed;
  s.stream = stream;
  s.stream_seed = rank_stream_seed(seed, stream);
  s.requested_batches_per_epoch = batches_per_epoch;
  s.offsets.assign(s.sizes.size() + 1, 0);
  std::partial_sum(s.sizes.begin(), s.sizes.end(), s.offsets.begin() + 1);
  s.members.resize(static_cast<size_t>(s.group_ids.numel()));
  auto fill = s.offsets;
  const auto* ids = s.group_ids.data_ptr<int64_t>();
  for (const auto i : c10::irange(s.group_ids.numel())) s.members[fill[ids[i]]++] = i;
}

void TemperatureSampler::reset(std::optional<size_t> new_size) {
  TORCH_CHECK(!new_size || *new_size == static_cast<size_t>(state_->group_ids.numel()),
              "TemperatureSampler: the dataset has ", new_size.value_or(0),
              " examples but the sampler was built for ", state_->group_ids.numel());
  state_->epoch_batch = 0;
}

std::optional<std::vector<size_t>> TemperatureSampler::next(size_t batch_size) {
  auto& s = *state_;
  TORCH_CHECK(batch_size > 0, "TemperatureSampler: batch size must be positive");
  if (s.batches_per_epoch == 0) {
    const auto n = static_cast<int64_t>(s.members.size());
    s.batches_per_epoch = s.requested_batches_per_epoch > 0
                              ? s.requested_batches_per_epoch
                              : (n + int64_t(batch_size) - 1) / int64_t(batch_size);
  }
  if (s.epoch_batch >= s.batches_per_epoch) return std::nullopt;
  const auto& cdf = s.cdf_for(s.schedule.at(s.step));
  std::vector<size_t> batch(batch_size);
  const auto step = static_cast<uint64_t>(s.step);
  for (const auto j : c10::irange(batch_size)) {
    const auto r = sgdx::detail::philox4x32_10(
        static_cast<uint32_t>(j), static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0x7E3D0001u,
        static_cast<uint32_t>(s.stream_seed), static_cast<uint32_t>(s.stream_seed >> 32));
    const double u_group = unit(r.v[0], r.v[1]), u_member = unit(r.v[2], r.v[3]);
    const auto k = std::min<size_t>(
        static_cast<size_t>(std::upper_bound(cdf.begin(), cdf.end(), u_group) - cdf.begin()), cdf.size() - 1);
    const int64_t n_k = s.sizes[k];
    const int64_t m = std::min<int64_t>(static_cast<int64_t>(u_member * double(n_k)), n_k - 1);
    batch[j] = static_cast<size_t>(s.members[s.offsets[k] + m]);
  }
  ++s.step;
  ++s.epoch_batch;
  return batch;
}

void TemperatureSampler::save(torch::serialize::OutputArchive& archive) const {
  const auto& s = *state_;
  archive.write("step", c10::IValue(s.step));
  archive.write("epoch_batch", c10::IValue(s.epoch_batch));
  archive.write("batches_per_epoch", c10::IValue(s.batches_per_epoch));
  archive.write("seed", c10::IValue(static_cast<int64_t>(s.seed)));
  archive.write("sizes", at::tensor(c10::ArrayRef<int64_t>(s.sizes)), /*is_buffer=*/true);
  std::vector<double> flat;
  for (const auto& [step, tau] : s.schedule.points()) {
    flat.push_back(static_cast<double>(step));
    flat.push_back(tau);
  }
  archive.write("schedule", at::tensor(c10::ArrayRef<double>(flat)).reshape({-1, 2}), /*is_buffer=*/true);
}

void TemperatureSampler::load(torch::serialize::InputArchive& archive) {
  auto& s = *state_;
  at::Tensor sizes, schedule;
  archive.read("sizes", sizes, /*is_buffer=*/true);
  TORCH_CHECK(sizes.numel() == static_cast<int64_t>(s.sizes.size()) &&
                  std::equal(s.sizes.begin(), s.sizes.end(), sizes.data_ptr<int64_t>()),
              "TemperatureSampler::load: the saved group sizes ", sizes, " differ from this sampler's ",
              c10::IntArrayRef(s.sizes));
  archive.read("schedule", schedule, /*is_buffer=*/true);
  std::vector<std::pair<int64_t, double>> points;
  for (const auto i : c10::irange(schedule.size(0)))
    points.emplace_back(static_cast<int64_t>(schedule[i][0].item<double>()), schedule[i][1].item<double>());
  s.schedule = TemperatureSchedule(points);
  c10::IValue v;
  archive.read("step", v);
  s.step = v.toInt();
  archive.read("epoch_batch", v);
  s.epoch_batch = v.toInt();
  archive.read("batches_per_epoch", v);
  s.batches_per_epoch = v.toInt();
  archive.read("seed", v);
  s.seed = static_cast<uint64_t>(v.toInt());
  s.stream_seed = rank_stream_seed(s.seed, s.stream);
  s.cached_tau = std::numeric_limits<double>::quiet_NaN();
}

int64_t TemperatureSampler::step() const {
  return state_->step;
}
double TemperatureSampler::current_tau() const {
  return state_->schedule.at(state_->step);
}
const std::vector<int64_t>& TemperatureSampler::sizes() const {
  return state_->sizes;
}
const at::Tensor& TemperatureSampler::group_ids() const {
  return state_->group_ids;
}

at::Tensor long_tailed_indices(const at::Tensor& labels, double imbalance_ratio, uint64_t seed) {
  TORCH_CHECK(imbalance_ratio >= 1 && std::isfinite(imbalance_ratio),
              "long-tailed subset: imbalance ratio must be >= 1, got ", imbalance_ratio);
  const auto sizes = group_sizes(labels);
  const int64_t C = static_cast<int64_t>(sizes.size());
  auto ids = labels.to(at::kLong).cpu();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<at::Tensor> keep;
  for (const auto c : c10::irange(C)) {
    const double frac = C > 1 ? std::pow(imbalance_ratio, -double(c) / double(C - 1)) : 1.0;
    const auto need = std::max<int64_t>(1, static_cast<int64_t>(std::floor(double(sizes[0]) * frac + 1e-9)));
    TORCH_CHECK(sizes[c] >= need, "long-tailed subset: class ", c, " has ", sizes[c], " examples but needs ",
                need);
    auto members = at::nonzero(ids == c).flatten();
    keep.push_back(members.index_select(0, at::randperm(sizes[c], gen, at::kLong).narrow(0, 0, need)));
  }
  return std::get<0>(at::sort(at::cat(keep)));
}

}  // namespace sgdx::data

// GradQueueSGDM's per-tensor state and checkpoints: GradQueueSGDMParamState's
// serialisation and equality (from one list), save/load, state_bytes.
#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/optim/serialize.h>

#include <cmath>
#include <string>

#include "gradqueue_internal.h"
#include "gradqueue_window.h"
#include "sgdx/optim/detail/param_groups.h"
#include "sgdx/optim/gradqueue.h"

namespace sgdx::optim {
namespace {
// 1 (no key): window sums; 2: mean and M2 / variance (sgdx/detail/gradqueue_math.h).
constexpr int64_t kStateFormat = 2;

// X(name): the state's fields in archive order; integers and optional tensors.
// clang-format off
#define SGDX_GQ_STATE_FIELDS(X) \
  X(step) X(momentum_buffer) X(queue) X(s1) X(s2) X(head) X(count) X(window) X(pushes)
// clang-format on

void write_field(torch::serialize::OutputArchive& a, const char* key, int64_t x) {
  a.write(key, c10::IValue(x));
}
void write_field(torch::serialize::OutputArchive& a, const char* key, const at::Tensor& t) {
  a.write(std::string(key) + "_defined", c10::IValue(t.defined()));
  if (t.defined()) a.write(key, t, /*is_buffer=*/true);
}
void read_field(torch::serialize::InputArchive& a, const char* key, int64_t& x) {
  c10::IValue v;
  a.read(key, v);
  x = v.toInt();
}
void read_field(torch::serialize::InputArchive& a, const char* key, at::Tensor& t) {
  c10::IValue v;
  a.read(std::string(key) + "_defined", v);
  t = at::Tensor();  // a fresh tensor: reading into a defined one set_()s it in place
  if (v.toBool()) a.read(key, t, /*is_buffer=*/true);
}
bool same_field(int64_t x, int64_t y) {
  return x == y;
}
bool same_field(const at::Tensor& x, const at::Tensor& y) {
  return x.defined() == y.defined() && (!x.defined() || torch::equal(x, y));
}
}  // namespace

void GradQueueSGDMParamState::serialize(torch::serialize::OutputArchive& archive) const {
#define SGDX_GQ_WRITE(name) write_field(archive, #name, name());
  SGDX_GQ_STATE_FIELDS(SGDX_GQ_WRITE)
#undef SGDX_GQ_WRITE
}

void GradQueueSGDMParamState::serialize(torch::serialize::InputArchive& archive) {
#define SGDX_GQ_READ(name)         \
  {                                \
    auto x = name();               \
    read_field(archive, #name, x); \
    name(x);                       \
  }
  SGDX_GQ_STATE_FIELDS(SGDX_GQ_READ)
#undef SGDX_GQ_READ
}

bool operator==(const GradQueueSGDMParamState& a, const GradQueueSGDMParamState& b) {
  bool same = true;
#define SGDX_GQ_EQ(name) same = same && same_field(a.name(), b.name());
  SGDX_GQ_STATE_FIELDS(SGDX_GQ_EQ)
#undef SGDX_GQ_EQ
  return same;
}

int64_t GradQueueSGDM::state_bytes() const {
  int64_t total = 0;
  for (const auto& [key, s] : state_) {
    const auto& st = static_cast<const GradQueueSGDMParamState&>(*s);
    for (const auto* t : {&st.momentum_buffer(), &st.queue(), &st.s1(), &st.s2()}) {
      if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
    }
  }
  return total;
}

void GradQueueSGDM::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<GradQueueSGDMParamState, GradQueueSGDMOptions>(archive, *this);
  archive.write("gradqueue_state_format", c10::IValue(kStateFormat));
  archive.write("gradqueue_loss_ema", c10::IValue(loss_ema_));
  archive.write("gradqueue_has_loss_ema", c10::IValue(has_loss_ema_));
  archive.write("gradqueue_pending_trend", c10::IValue(pending_trend_));
  archive.write("gradqueue_pending_loss", c10::IValue(pending_loss_ ? *pending_loss_ : std::nan("")));
  archive.write("gradqueue_kmeans_calls", c10::IValue(static_cast<int64_t>(kmeans_calls_)));
  // The optimizer-wide settings (loss_beta, clusters, k-means, scope, seed) live in the defaults.
  torch::serialize::OutputArchive d;
  defaults_options().serialize(d);
  archive.write("gradqueue_defaults", d);
}

namespace {
// A loaded tensor state against its parameter and options; converts format 1 and moves
// the tensors to the parameter's device.
void adopt_loaded_state(GradQueueSGDMParamState& st, const at::Tensor& p, const GradQueueSGDMOptions& o,
                        int64_t format) {
  const bool exact = detail::exact_storage(o);
  TORCH_CHECK(st.s1().defined() && st.s1().sizes() == p.sizes(),
              "GradQueueSGDM::load: saved state has shape ",
              st.s1().defined() ? st.s1().sizes() : c10::IntArrayRef{}, " but the parameter has ", p.sizes());
  TORCH_CHECK(exact == st.queue().defined() && (!st.queue().defined() || st.queue().size(0) == o.q_max()),
              "GradQueueSGDM::load: the saved queue does not match the options' storage/q_max");
  const auto stats_dtype = ops::gradqueue_stats_dtype(p.scalar_type());
  const auto mean_dtype = ops::gradqueue_mean_dtype(p.scalar_type(), exact);
  if (format < 2) {  // window sums S1, S2 in the parameter's dtype: to mean and M2 (or variance)
    TORCH_CHECK(st.s1().scalar_type() == p.scalar_type(), "GradQueueSGDM::load: saved state has dtype ",
                st.s1().scalar_type(), " but the parameter has ", p.scalar_type());
    st.s1(st.s1().to(mean_dtype));
    st.s2(st.s2().to(stats_dtype));
    st.queue(st.queue().defined() ? st.queue().to(stats_dtype) : st.queue());
    if (exact) {
      detail::window_resync(st);
    } else {
      st.s2((st.s2() - st.s1().square().to(stats_dtype)).clamp_min(0));
    }
  }
  TORCH_CHECK(st.s1().scalar_type() == mean_dtype && st.s2().scalar_type() == stats_dtype,
              "GradQueueSGDM::load: saved window statistics have dtypes ", st.s1().scalar_type(), " and ",
              st.s2().scalar_type(), " but a ", p.scalar_type(), " parameter needs ", mean_dtype, " and ",
              stats_dtype);
  st.s1(detail::to_device_of(st.s1(), p));
  st.s2(detail::to_device_of(st.s2(), p));
  st.queue(detail::to_device_of(st.queue(), p));
  st.momentum_buffer(detail::to_device_of(st.momentum_buffer(), p));
}
}  // namespace

void GradQueueSGDM::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<GradQueueSGDMParamState, GradQueueSGDMOptions>(archive, *this);
  c10::IValue v;
  const int64_t format = archive.try_read("gradqueue_state_format", v) ? v.toInt() : 1;
  TORCH_CHECK(format <= kStateFormat, "GradQueueSGDM::load: state format ", format,
              " is newer than this sgdx reads (", kStateFormat, ")");
  archive.read("gradqueue_loss_ema", v);
  loss_ema_ = v.toDouble();
  archive.read("gradqueue_has_loss_ema", v);
  has_loss_ema_ = v.toBool();
  archive.read("gradqueue_pending_trend", v);
  pending_trend_ = v.toInt();
  pending_loss_.reset();
  if (archive.try_read("gradqueue_pending_loss", v) && !std::isnan(v.toDouble()))
    pending_loss_ = v.toDouble();
  archive.read("gradqueue_kmeans_calls", v);
  kmeans_calls_ = static_cast<uint64_t>(v.toInt());
  torch::serialize::InputArchive d;
  archive.read("gradqueue_defaults", d);
  static_cast<GradQueueSGDMOptions&>(defaults()).serialize(d);
  // The loaded groups' optimizer-wide options are the checkpoint's (process ones the
  // defaults' of a fresh options object): the defaults' hold for every group.
  for (const auto gi : c10::irange(param_groups_.size()))
    detail::copy_optimizer_wide(detail::as_gq(param_groups_[gi].options(), gi), defaults_options());
  synced_ = defaults_options();
  for (const auto gi : c10::irange(param_groups_.size())) {
    const auto& o = detail::as_gq(param_groups_[gi].options(), gi);
    for (auto& p : param_groups_[gi].params()) {
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) continue;
      adopt_loaded_state(static_cast<GradQueueSGDMParamState&>(*it->second), p, o, format);
    }
  }
}

}  // namespace sgdx::optim

#include "gradqueue_window.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace sgdx::optim::detail {
namespace {
// The queue row of the oldest entry in the window.
int64_t oldest_row(const GradQueueSGDMParamState& st, int64_t q) {
  return ((st.head() - st.count()) % q + q) % q;
}

// Queue rows of the window, oldest first: rows (head - count + j) mod q, indices formed
// on the queue's device (no host-to-device copy, no synchronisation).
at::Tensor window_rows(const GradQueueSGDMParamState& st) {
  const int64_t q = st.queue().size(0);
  const auto idx = (at::arange(st.count(), at::TensorOptions().dtype(at::kLong).device(st.queue().device())) +
                    (st.head() - st.count() + q))
                       .remainder(q);
  return st.queue().index_select(0, idx);
}
}  // namespace

double window_inv_n(const GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o) {
  return exact_storage(o) ? 1.0 / static_cast<double>(st.count()) : 1.0;
}

void window_init(GradQueueSGDMParamState& st, const at::Tensor& p, const GradQueueSGDMOptions& o) {
  const auto opts = p.options()
                        .dtype(ops::gradqueue_stats_dtype(p.scalar_type()))
                        .memory_format(at::MemoryFormat::Contiguous);
  if (exact_storage(o)) st.queue(at::zeros({o.q_max(), p.numel()}, opts));
  st.s1(at::zeros(p.sizes(), opts.dtype(ops::gradqueue_mean_dtype(p.scalar_type(), exact_storage(o)))));
  st.s2(at::zeros(p.sizes(), opts));
  st.window(o.q_init());
}

void window_resize(GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o, int64_t trend) {
  st.window(std::clamp(st.window() + trend, o.q_min(), o.q_max()));
  if (!exact_storage(o)) {
    st.count(std::min(st.count(), st.window()));
    return;
  }
  // Dropping x from a window of n + 1 entries: the inverse of sgdx::detail::window_push.
  while (st.count() > st.window()) {
    const auto old = st.queue()[oldest_row(st, o.q_max())].view(st.s1().sizes());
    const int64_t n = st.count() - 1;
    const auto mu = st.s1().clone();
    st.s1().add_((mu - old) / static_cast<double>(n));
    st.s2().sub_((old - mu) * (old - st.s1())).clamp_min_(0);
    st.count(n);
  }
}

void window_push_operands(ops::GradQueueTensor& t, GradQueueSGDMParamState& st,
                          const GradQueueSGDMOptions& o) {
  t.count = st.count();
  t.s1 = st.s1();
  t.s2 = st.s2();
  if (exact_storage(o)) {
    t.slot = st.queue()[st.head()];
    if (window_full(st)) t.old = st.queue()[oldest_row(st, o.q_max())];
  } else {
    t.ema_rate = 1.0 / static_cast<double>(std::min(st.count() + 1, st.window()));
  }
}

void window_after_push(GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o) {
  st.pushes(st.pushes() + 1);
  st.count(std::min(st.count() + 1, st.window()));
  if (exact_storage(o)) {
    st.head((st.head() + 1) % o.q_max());
    if (o.resync_every() > 0 && st.pushes() % o.resync_every() == 0) window_resync(st);
  }
}

void window_resync(GradQueueSGDMParamState& st) {
  if (st.count() == 0) {
    st.s1().zero_();
    st.s2().zero_();
    return;
  }
  const auto rows = window_rows(st).to(at::kDouble);
  const auto mean = rows.mean(0);
  st.s1().copy_(mean.view(st.s1().sizes()));
  st.s2().copy_((rows - mean).square().sum(0).view(st.s1().sizes()));
}

}  // namespace sgdx::optim::detail

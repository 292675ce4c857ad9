#pragma once
// The window of one parameter tensor (GradQueueSGDMParamState), the only place its
// state machine is written. State: L = window (q_min <= L <= q_max), n = count (the
// gradients in the window, n <= L), head (exact storage: the queue row the next push
// writes; the window is rows head - n .. head - 1 mod q_max, oldest first), pushes.
//
//   phase (n before a push)    Delta-rho                 the push of d
//   warm-up  n <  q_min        1 (SGD-momentum)          enters; n + 1
//   filling  q_min <= n < L    from (mu, M2 / n)         enters; n + 1
//   full     n == L            from (mu, M2 / n)         enters, the oldest row leaves; n stays
//
// Every step, before the statistics are read, every tensor with state (also one without
// a gradient this step) moves L by the loss trend (+1, -1 or 0, clipped to [q_min, q_max]);
// a shorter window drops its oldest rows from mu/M2 until n <= L (window_resize). After a
// push head advances (mod q_max) and every resync_every pushes mu/M2 are recomputed from
// the rows (window_after_push). ema storage has no rows: the same n and L, a push is a
// running-moment update with rate 1 / min(n + 1, L), and a shorter window only clips n.
// The element arithmetic of a push is sgdx/detail/gradqueue_math.h.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/optim/gradqueue.h"

namespace sgdx::optim::detail {

inline bool exact_storage(const GradQueueSGDMOptions& o) {
  return o.storage() == GradQueueStorage::exact;
}

/// Delta-rho comes from the window statistics: filling or full, not warm-up.
inline bool window_has_scarcity(const GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o) {
  return st.count() >= o.q_min();
}
/// The window is full: the coming push drops its oldest entry.
inline bool window_full(const GradQueueSGDMParamState& st) {
  return st.count() == st.window();
}
/// The variance is s2 * window_inv_n: 1/n for exact storage (s2 is M2), 1 for ema.
double window_inv_n(const GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o);

/// Fresh state for p: L = q_init, n = 0, zero statistics (and queue, exact storage).
void window_init(GradQueueSGDMParamState& st, const at::Tensor& p, const GradQueueSGDMOptions& o);
/// L += trend within [q_min, q_max]; drops the oldest entries beyond L.
void window_resize(GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o, int64_t trend);
/// The window operands of the coming push: count, the slot it writes and the row that
/// leaves (exact storage), or the running moments' rate (ema).
void window_push_operands(ops::GradQueueTensor& t, GradQueueSGDMParamState& st,
                          const GradQueueSGDMOptions& o);
/// The bookkeeping after a push: pushes, n, head, resync.
void window_after_push(GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o);
/// Exact statistics from the rows (two passes in float64): bounds the rounding drift.
void window_resync(GradQueueSGDMParamState& st);

}  // namespace sgdx::optim::detail

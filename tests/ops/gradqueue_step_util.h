#pragma once
// Operands of one GradQueue tensor step for the CPU and CUDA step tests.
#include <ATen/ATen.h>

#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::testing {

struct GQOperands {
  at::Tensor p, g, v, s1, s2, queue;
  GQOperands to(const c10::Device& d) const {
    return {p.to(d), g.to(d), v.to(d), s1.to(d), s2.to(d), queue.to(d)};
  }
  GQOperands clone() const {
    return {p.clone(), g.clone(), v.clone(), s1.clone(), s2.clone(), queue.clone()};
  }
};

/// Random operands of n elements with a queue of q rows and their window statistics
/// (mean, sum of squared deviations + 0.1: a positive variance), in gradqueue_stats_dtype.
inline GQOperands make_gq_operands(int64_t n, at::ScalarType dt, int64_t q, bool exact = true) {
  auto rows = at::randn({q, n}, at::kDouble);
  const auto mean = rows.mean(0);
  const auto st = sgdx::ops::gradqueue_stats_dtype(dt);
  return {at::randn({n}).to(dt),
          (3 * at::randn({n})).to(dt),
          at::randn({n}).to(dt),
          mean.to(sgdx::ops::gradqueue_mean_dtype(dt, exact)),
          ((rows - mean).square().sum(0) + 0.1).to(st),
          rows.to(st)};
}

/// The step's view: the new row is queue[0]; old_mode 1: queue[1] leaves, 2: queue[0] itself leaves.
/// stats > 0: Delta-rho from a window of `stats` entries; 0: warm-up (a window of the queue's rows).
inline sgdx::ops::GradQueueTensor gq_view(GQOperands& o, bool exact, int old_mode, int64_t stats,
                                          bool first) {
  sgdx::ops::GradQueueTensor t;
  t.param = o.p;
  t.grad = o.g;
  t.momentum = o.v;
  t.s1 = o.s1;
  t.s2 = o.s2;
  if (exact) {
    t.slot = o.queue[0];
    if (old_mode == 1) t.old = o.queue[1];
    if (old_mode == 2) t.old = o.queue[0];
  } else {
    t.ema_rate = 0.25;
  }
  t.count = stats > 0 ? stats : o.queue.size(0);
  t.scarcity = stats > 0;
  t.first_step = first;
  return t;
}

/// The step settings of the test grids: lr 0.1, weight decay 0.01, momentum mode `mom`
/// (0 none, 1 heavy ball first step, 2 heavy ball with dampening 0.1, 3 nesterov),
/// element or tensor granularity, kappa and the Delta-rho range as given.
inline sgdx::ops::GradQueueStepConfig gq_config(int mom, bool per_element, double kappa, double rho_min,
                                                double rho_max) {
  sgdx::ops::GradQueueStepConfig c;
  c.lr = 0.1;
  c.weight_decay = 0.01;
  c.momentum = mom == 0 ? 0.0 : 0.9;
  c.dampening = mom == 2 ? 0.1 : 0.0;
  c.nesterov = mom == 3;
  c.per_element = per_element;
  c.kappa = kappa;
  c.rho_min = rho_min;
  c.rho_max = rho_max;
  return c;
}

}  // namespace sgdx::testing

#pragma once
// Helpers shared by the GradQueueSGDM translation units (not installed).
#include <ATen/core/Tensor.h>
#include <torch/optim/optimizer.h>

#include <cstddef>

#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/optim/gradqueue.h"

namespace sgdx::optim::detail {

/// A group's options as GradQueueSGDMOptions (a clear error for another optimizer's).
const GradQueueSGDMOptions& as_gq(const torch::optim::OptimizerOptions& o, size_t group);
GradQueueSGDMOptions& as_gq(torch::optim::OptimizerOptions& o, size_t group);
/// The kernel's configuration from a group's options.
ops::GradQueueStepConfig step_config(const GradQueueSGDMOptions& o);
/// Sums of Delta-rho stay on their devices; every device keeps one running sum.
void add_rho(at::Tensor& total, const at::Tensor& part);
/// Refuses `group` (parameter group `index`) when an optimizer-wide option differs from
/// `optimizer`'s, naming the option and both values.
void check_optimizer_wide(const GradQueueSGDMOptions& group, const GradQueueSGDMOptions& optimizer,
                          size_t index);
/// Copies the optimizer-wide options of `from` into `to`.
void copy_optimizer_wide(GradQueueSGDMOptions& to, const GradQueueSGDMOptions& from);

}  // namespace sgdx::optim::detail

#pragma once
#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops::detail {
/// The fused CPU kernel (gradqueue_step_cpu.cpp) on checked float32/float64 CPU operands
/// without a direction; returns the sum of Delta-rho.
double gradqueue_step_cpu(GradQueueTensor& t, const GradQueueStepConfig& c);
}  // namespace sgdx::ops::detail

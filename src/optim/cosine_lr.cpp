#include "sgdx/optim/cosine_lr.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <limits>

namespace sgdx::optim {

CosineLR::CosineLR(torch::optim::Optimizer& optimizer, int64_t total_steps, double eta_min)
    : torch::optim::LRScheduler(optimizer),
      optimizer_(optimizer),
      base_lrs_(get_current_lrs()),
      total_steps_(total_steps),
      eta_min_(eta_min) {
  TORCH_CHECK(total_steps > 0, "CosineLR: total_steps must be > 0, got ", total_steps);
  TORCH_CHECK(std::isfinite(eta_min) && eta_min >= 0, "CosineLR: eta_min must be finite and >= 0, got ",
              eta_min);
}

double CosineLR::lr_at(size_t group, int64_t t) const {
  TORCH_CHECK(group < base_lrs_.size(), "CosineLR: no parameter group ", group, " (", base_lrs_.size(),
              " groups)");
  return eta_min_ +
         0.5 * (base_lrs_[group] - eta_min_) * (1 + std::cos(M_PI * double(t) / double(total_steps_)));
}

std::vector<double> CosineLR::get_lrs() {
  // LRScheduler::step() asks for the rates of the next step, then counts the step.
  std::vector<double> lrs(base_lrs_.size());
  for (size_t g = 0; g < lrs.size(); ++g) lrs[g] = lr_at(g, steps() + 1);
  return lrs;
}

void CosineLR::set_steps(int64_t t) {
  TORCH_CHECK(t >= 0 && t <= std::numeric_limits<unsigned>::max(), "CosineLR::set_steps: step ", t,
              " is out of range");
  step_count_ = static_cast<unsigned>(t);
  for (size_t g = 0; g < base_lrs_.size(); ++g) optimizer_.param_groups()[g].options().set_lr(lr_at(g, t));
}

}  // namespace sgdx::optim

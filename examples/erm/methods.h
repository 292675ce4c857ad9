#pragma once
// sgdx-erm's methods: proximal SGD, SVRG, Katyusha and DASVRDA from w = 0, each a
// curve of the relative gap (P - P*) / |P*| after every pass over the data.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "problem.h"

namespace sgdx_erm {

struct Curve {
  std::string method;
  double lr = 0;
  std::vector<std::pair<double, double>> points;  // (passes, relative gap)
  std::vector<double> seconds;
};

/// Refuses, naming it, a method without a sparse form when the problem is held sparse.
void check_storage(const Problem& p, const std::vector<std::string>& methods);

/// The default step size of `method` from the mean smoothness.
double default_lr(const Problem& p, const std::string& method, int64_t b);

/// One run of `method` for `passes` passes; throws when the objective diverges.
Curve run_method(const Problem& p, const std::string& method, double lr, int64_t b, double passes,
                 double p_star, uint64_t seed);

/// The run with the smallest final gap over the step sizes tried: the default times
/// `scale`, or with `tune` a log grid x1/4 ... x16 of that (a diverging step size is skipped).
Curve best_curve(const Problem& p, const std::string& method, int64_t b, double passes, double p_star,
                 uint64_t seed, bool tune, double scale);

}  // namespace sgdx_erm

#pragma once
// sgdx-erm's command line: its options and the checks that run before any work.
#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "pstar_cache.h"

namespace sgdx_erm {

/// Everything the command line sets.
struct ErmOptions {
  std::string data = "heart-scale", loss = "logistic", methods = "sgd,svrg,katyusha,dasvrda",
              out = "runs/erm",
              storage = "auto";  ///< auto: sparse when under 25 % of the entries are non-zero
  double l1 = 0, l2 = 1e-6, passes = 50, step_scale = 1;  ///< step_scale: x the default step size
  int64_t batch = 0, features = 0;                        ///< 0: ceil(sqrt(n)); the largest index in the file
  uint64_t seed = 0;
  bool tune = false, no_normalize = false, liblinear = false;
  std::string pstar_cache = default_cache_dir();  ///< "off": no cache
};

/// Adds sgdx-erm's options to `app`, bound to `o`, each value checked as it is parsed.
void add_options(CLI::App& app, ErmOptions& o);

/// The checks that need several options, the output directories or liblinear, all run
/// before P*, training or any file written; returns the methods to run, in order.
std::vector<std::string> check_options(const CLI::App& app, const ErmOptions& o);

}  // namespace sgdx_erm

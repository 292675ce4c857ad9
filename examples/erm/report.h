#pragma once
// sgdx-erm's results: the curves as CSV, a markdown table on stdout, liblinear's
// solutions of the same problem and a gnuplot plot.
#include <cstdint>
#include <string>
#include <vector>

#include "cli.h"
#include "methods.h"

namespace sgdx_erm {

/// Creates `out` and writes <out>/gap.csv.
void write_curves(const std::string& out, const std::vector<Curve>& curves);

/// Per method: passes to each tolerance, seconds to 1e-4 and 1e-6, final gap.
void print_table(const std::vector<Curve>& curves);

/// Times liblinear-train at three tolerances on the same (normalised) rows, written to
/// <out>/data.libsvm, and prints the gap of each of its solutions.
void compare_liblinear(const Problem& p, const ErmOptions& o, double p_star);

/// <out>/gap.png when gnuplot is installed.
void plot_curves(const ErmOptions& o, int64_t b, const std::vector<Curve>& curves);

}  // namespace sgdx_erm

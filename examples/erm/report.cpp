#include "report.h"

#include <fmt/core.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "../common/atomic_file.h"

namespace sgdx_erm {
namespace {

// The passes at which the curve first reaches `tol`, "-" if it never does.
std::string first_pass(const Curve& c, double tol) {
  for (size_t k = 0; k < c.points.size(); ++k)
    if (c.points[k].second <= tol) return fmt::format("{:g}", c.points[k].first);
  return "-";
}

std::string seconds_to(const Curve& c, double tol) {
  for (size_t k = 0; k < c.points.size(); ++k)
    if (c.points[k].second <= tol) return fmt::format("{:.2f}", c.seconds[k]);
  return "-";
}

void write_libsvm(const Problem& p, const std::string& file) {
  std::string rows;
  const auto* y = p.y.data_ptr<double>();
  if (p.sparse()) {
    const auto* ip = p.csr->indptr.data_ptr<int64_t>();
    const auto* ix = p.csr->indices.data_ptr<int64_t>();
    const auto* v = p.csr->values.data_ptr<double>();
    for (int64_t i = 0; i < p.n(); ++i) {
      rows += y[i] > 0 ? "+1" : "-1";
      for (int64_t k = ip[i]; k < ip[i + 1]; ++k)
        if (v[k] != 0) rows += fmt::format(" {}:{:.17g}", ix[k] + 1, v[k]);
      rows += '\n';
    }
  } else {
    auto acc = p.a.accessor<double, 2>();
    for (int64_t i = 0; i < p.n(); ++i) {
      rows += y[i] > 0 ? "+1" : "-1";
      for (int64_t j = 0; j < p.d(); ++j)
        if (acc[i][j] != 0) rows += fmt::format(" {}:{:.17g}", j + 1, acc[i][j]);
      rows += '\n';
    }
  }
  sgdx_examples::write_atomically(file, rows);
}

// The weights of a liblinear model file, signed for label +1.
at::Tensor read_liblinear_weights(const std::string& model) {
  std::ifstream in(model);
  std::vector<double> wv;
  bool flip = false, weights = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("label", 0) == 0) flip = line.substr(6, 2) == "-1";
    if (weights && !line.empty()) wv.push_back(std::stod(line));
    if (line == "w") weights = true;
  }
  return torch::tensor(wv, torch::kDouble) * (flip ? -1.0 : 1.0);
}

}  // namespace

void write_curves(const std::string& out, const std::vector<Curve>& curves) {
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  TORCH_CHECK(!ec, "cannot create the output directory '", out, "': ", ec.message());
  std::string csv = "method,lr,passes,seconds,relative_gap\n";
  for (const auto& c : curves)
    for (size_t k = 0; k < c.points.size(); ++k)
      csv += fmt::format("{},{:.6g},{},{:.4f},{:.6e}\n", c.method, c.lr, c.points[k].first, c.seconds[k],
                         c.points[k].second);
  sgdx_examples::write_atomically(out + "/gap.csv", csv);
}

void print_table(const std::vector<Curve>& curves) {
  fmt::print(
      "\n| method | step size | passes to 1e-4 | 1e-6 | 1e-8 | seconds to 1e-4 | 1e-6 | final gap "
      "|\n|---|---|---|---|---|---|---|---|\n");
  for (const auto& c : curves)
    fmt::print("| {} | {:.4g} | {} | {} | {} | {} | {} | {:.2e} |\n", c.method, c.lr, first_pass(c, 1e-4),
               first_pass(c, 1e-6), first_pass(c, 1e-8), seconds_to(c, 1e-4), seconds_to(c, 1e-6),
               c.points.back().second);
}

void compare_liblinear(const Problem& p, const ErmOptions& o, double p_star) {
  const std::string file = o.out + "/data.libsvm", model = o.out + "/liblinear.model";
  write_libsvm(p, file);
  const int solver = o.l2 > 0 ? 0 : 6;
  const double C = 1.0 / (double(p.n()) * (o.l2 > 0 ? o.l2 : o.l1));
  // Each run reads the file again: a run with -e 1e9 stops at its first check, so its time
  // is the reading and setup that every row's "whole run" includes.
  for (double eps : {1e9, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6}) {
    const auto start = std::chrono::steady_clock::now();
    const auto cmd = fmt::format("liblinear-train -q -s {} -c {:.17g} -e {:g} '{}' '{}' >/dev/null 2>&1",
                                 solver, C, eps, file, model);
    TORCH_CHECK(std::system(cmd.c_str()) == 0, "liblinear-train failed: ", cmd);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto w = read_liblinear_weights(model);
    const double gap = (p.objective(w) - p_star) / std::abs(p_star);
    fmt::print("| liblinear -s {} -e {:g}{} | C = {:.4g} | | | | | {:.2f} (whole run) | {:.2e} |\n", solver,
               eps, eps > 1 ? " (reading only)" : "", C, sec, gap);
  }
}

void plot_curves(const ErmOptions& o, int64_t b, const std::vector<Curve>& curves) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return;
  std::string gp = fmt::format(
      "set terminal pngcairo noenhanced size 900,600\nset output '{0}/gap.png'\nset logscale y\nset "
      "format y '1e%T'\n"
      "set xlabel 'passes over the data'\nset ylabel '(P - P*) / |P*|'\nset grid\nset datafile separator "
      "','\n"
      "set title '{1}: {2}, l1 {3:g}, l2 {4:g}, batch {5}'\nplot ",
      o.out, o.data, o.loss, o.l1, o.l2, b);
  for (size_t i = 0; i < curves.size(); ++i)
    gp += fmt::format(
        "{}'{}/gap.csv' using (strcol(1) eq '{}' ? $3 : 1/0):5 with lines lw 2 title '{} (step {:.3g})'",
        i ? ", " : "", o.out, curves[i].method, curves[i].method, curves[i].lr);
  sgdx_examples::write_atomically(o.out + "/gap.gp", gp + "\n");
  if (std::system(fmt::format("gnuplot '{}/gap.gp'", o.out).c_str()) == 0)
    fmt::print("\nplot: {}/gap.png\n", o.out);
}

}  // namespace sgdx_erm

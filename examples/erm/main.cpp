// sgdx-erm: elastic-net regularised logistic (or least-squares) regression with
// SGD, SVRG, Katyusha and DASVRDA; log10(P - P*) against passes over the data.
#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <string>

#include "cli.h"
#include "methods.h"
#include "problem.h"
#include "report.h"

namespace {

int fail(const std::string& msg) {
  std::fprintf(stderr, "sgdx-erm: error: %s\n", msg.c_str());
  return 1;
}

int run(int argc, char** argv) {
  namespace se = sgdx_erm;
  se::ErmOptions o;
  CLI::App app{"sgdx-erm: regularised ERM with SGD, SVRG, Katyusha and DASVRDA (log gap vs passes)"};
  se::add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  const auto methods = se::check_options(app, o);
  const auto t0 = std::chrono::steady_clock::now();
  const auto p = se::load_problem(o, methods);
  const double read_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  se::check_storage(p, methods);
  const int64_t b = se::batch_size(o, p);
  const auto p_star = se::certified_p_star(p, o.pstar_cache == "off" ? "" : o.pstar_cache);
  fmt::print(
      "sgdx-erm: {} ({} x {}), {}, read in {:.2f} s, {} loss, l1 {:g}, l2 {:g}, batch {}; P* = {:.15g} "
      "({})\n",
      o.data, p.n(), p.d(),
      p.sparse() ? fmt::format("sparse ({} non-zeros)", p.csr->nnz()) : std::string("dense"), read_s, o.loss,
      o.l1, o.l2, b, p_star.value, p_star.source);
  std::vector<se::Curve> curves;
  curves.reserve(methods.size());
  for (const auto& m : methods)
    curves.push_back(se::best_curve(p, m, b, o.passes, p_star.value, o.seed, o.tune, o.step_scale));
  se::write_curves(o.out, curves);
  se::print_table(curves);
  if (o.liblinear) se::compare_liblinear(p, o, p_star.value);
  se::plot_curves(o, b, curves);
  fmt::print("curves: {}/gap.csv\n", o.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    return fail(what.substr(0, what.find('\n')));
  } catch (const std::exception& e) {  // e.g. std::filesystem errors on --out: one line, not an abort
    return fail(e.what());
  } catch (...) {
    return fail("unknown exception");
  }
}

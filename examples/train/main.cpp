// sgdx-train: trains the example models with LibTorch's and sgdx's optimizers,
// writes per-epoch metrics (CSV, JSON), a markdown summary and a PNG plot.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "cli.h"
#include "invocation.h"
#include "sgdx/config.h"

namespace {

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "sgdx-train: error: %s\n", first_line(msg).c_str());
  return 1;
}

int run(int argc, char** argv) {
  namespace st = sgdx_train;
  st::CliOptions o;
  CLI::App app{"sgdx-train: train an example model and compare optimizers (sgdx " SGDX_VERSION ")"};
  st::add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  const auto inv = st::resolve_invocation(app, o);
  const auto data = st::load_training_data(o.cfg);
  const auto config = st::run_config(o, inv, data);
  auto start = st::start_point(inv, config, o.seeds);
  st::announce(inv, o, data, config, start);
  return st::train_runs(inv, o, data, config, std::move(start));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {
    return fail("unknown exception");
  }
}

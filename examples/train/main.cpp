// sgdx-train: trains the example models with LibTorch's and sgdx's optimizers,
// writes per-epoch metrics (CSV, JSON), a markdown summary and a PNG plot. Under
// torchrun (or with MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE set) the ranks
// train one model data-parallel and rank 0 alone prints and writes (world.h).
#include <c10/util/Logging.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdlib>

#include <cstdio>
#include <optional>
#include <string>

#include "cli.h"
#include "invocation.h"
#include "sgdx/config.h"
#include "sgdx/dist/communicator.h"
#include "world.h"

namespace {

// Set once this process knows it is a rank of several: its errors then name it.
int g_rank = -1;

std::string first_line(const std::string& s) {
  return s.substr(0, s.find('\n'));
}

int fail(const std::string& msg) {
  if (g_rank >= 0) {
    std::fprintf(stderr, "sgdx-train: rank %d: error: %s\n", g_rank, first_line(msg).c_str());
  } else {
    std::fprintf(stderr, "sgdx-train: error: %s\n", first_line(msg).c_str());
  }
  return 1;
}

// The group of ranks in the environment (a world of one when WORLD_SIZE is unset).
sgdx_train::World join_world() {
  const auto options = sgdx::dist::options_from_env();
  if (options.world_size > 1) {
    g_rank = options.rank;
    // c10d logs every retry of a store connection with a backtrace; the error that
    // ends them is reported in one line. TORCH_CPP_LOG_LEVEL set by the user wins.
    if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr)
      FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 3);
  }
  return sgdx_train::World(sgdx::dist::connect(options));
}

int run(int argc, char** argv) {
  namespace st = sgdx_train;
  st::CliOptions o;
  CLI::App app{"sgdx-train: train an example model and compare optimizers (sgdx " SGDX_VERSION ")"};
  st::add_options(app, o);
  CLI11_PARSE(app, argc, argv);
  const auto world = join_world();
  const auto checkpoint_copy = st::share_checkpoint(world, o.resume_dir);
  // Every rank prepares; a refusal on any rank stops every rank (World::together).
  st::Invocation inv;
  std::optional<sgdx::data::DatasetSplits> data;
  nlohmann::json config;
  st::StartPoint start;
  world.together([&] {
    inv = st::resolve_invocation(app, o, world, checkpoint_copy ? checkpoint_copy->path : "");
    data.emplace(st::load_training_data(o.cfg));
    config = st::run_config(o, inv, *data);
  });
  st::check_same_config(world, config);
  world.together([&] {
    start = st::start_point(inv, config, o.seeds);
    st::announce(inv, o, *data, config, start);
  });
  return st::train_runs(inv, o, *data, config, std::move(start));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const sgdx_train::SharedError& e) {
    return g_rank > 0 ? 1 : fail(e.what());  // every rank met it; rank 0 says so
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {
    return fail("unknown exception");
  }
}

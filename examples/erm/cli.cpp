#include "cli.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iterator>

#include "../common/cli_checks.h"

namespace sgdx_erm {
namespace {

namespace checks = sgdx_examples;

constexpr const char* kMethods[] = {"sgd", "svrg", "katyusha", "dasvrda"};

// `--methods` as a list: no empty list, no empty item, no unknown or repeated method.
std::vector<std::string> parse_methods(const std::string& text) {
  TORCH_CHECK(!text.empty(), "--methods is empty (choose from sgd, svrg, katyusha, dasvrda)");
  std::vector<std::string> list;
  for (size_t start = 0;;) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string m = text.substr(start, comma - start);
    TORCH_CHECK(!m.empty(), "--methods '", text, "' has an empty item");
    TORCH_CHECK(std::find(std::begin(kMethods), std::end(kMethods), m) != std::end(kMethods),
                "unknown method '", m, "' (choose sgd, svrg, katyusha, dasvrda)");
    TORCH_CHECK(std::find(list.begin(), list.end(), m) == list.end(), "--methods '", text, "' lists '", m,
                "' twice");
    list.push_back(m);
    if (comma == text.size()) break;
    start = comma + 1;
  }
  return list;
}

// --out (the default too) and the files written there; --pstar-cache when given.
void check_directories(const CLI::App& app, const ErmOptions& o) {
  const auto out_problem = checks::output_directory_problem(o.out);
  TORCH_CHECK(out_problem.empty(), "--out: ", out_problem);
  for (const char* name : {"gap.csv", "gap.gp", "gap.png", "data.libsvm", "liblinear.model"}) {
    std::error_code ec;
    TORCH_CHECK(!std::filesystem::is_directory(o.out + "/" + name, ec), "--out: '", o.out, "/", name,
                "' is a directory, so the result cannot be written there");
  }
  if (app.count("--pstar-cache") > 0 && o.pstar_cache != "off") {
    const auto why = checks::output_directory_problem(o.pstar_cache);
    TORCH_CHECK(why.empty(), "--pstar-cache: ", why, " ('off': no cache)");
  }
}

}  // namespace

void add_options(CLI::App& app, ErmOptions& o) {
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("sgdx-erm: error: ") + e.what() + " (see --help)\n";
  });
  app.add_option("--data", o.data,
                 "heart-scale (Debian liblinear-tools), a9a ($SGDX_DATA_DIR/libsvm/a9a) or a LIBSVM file")
      ->capture_default_str();
  app.add_option("--features", o.features, "Number of features (0: the largest index in the file)")
      ->check(checks::integer(0));
  app.add_option("--loss", o.loss, "logistic or squares")
      ->check(CLI::IsMember({"logistic", "squares"}))
      ->capture_default_str();
  app.add_option("--l1", o.l1, "L1 weight lambda1")->check(checks::finite_number(0))->capture_default_str();
  app.add_option("--l2", o.l2, "L2 weight lambda2")->check(checks::finite_number(0))->capture_default_str();
  app.add_option("--methods", o.methods, "Comma-separated: sgd, svrg, katyusha, dasvrda")
      ->capture_default_str();
  app.add_option("--passes", o.passes, "Passes over the data per method (1 to 1e6)")
      ->check(checks::finite_number(1, 1e6))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "Minibatch size (0: ceil(sqrt(n)))")->check(checks::integer(0));
  app.add_option("--seed", o.seed, "Seed of the minibatch draws")
      ->check(checks::unsigned_integer())
      ->capture_default_str();
  app.add_flag("--tune", o.tune,
               "Tune each method's step size on a log grid (x1/4 ... x16 of the default) by final gap");
  app.add_option(
         "--step-scale", o.step_scale,
         "Multiply each method's default step size (and --tune's grid) by this (e.g. a step tuned on a "
         "smaller problem of the same kind)")
      ->check(checks::finite_number(1e-6, 1e6))
      ->capture_default_str();
  app.add_option(
         "--storage", o.storage,
         "auto, dense or sparse: how the data is held; sparse (CSR, O(nnz) memory) runs svrg, katyusha "
         "and dasvrda with lazy updates (Katyusha's steps are O(d) when l1 > 0); auto: sparse when under "
         "25 % of the entries are non-zero and sgd is not asked for")
      ->check(CLI::IsMember({"auto", "dense", "sparse"}))
      ->capture_default_str();
  app.add_flag("--no-normalize", o.no_normalize, "Keep rows as they are (default: unit-norm rows)");
  app.add_flag("--liblinear", o.liblinear,
               "Also time liblinear-train (-s 0 for l2, -s 6 for l1; C = 1/(n lambda), no bias) on the same "
               "(normalised) data in this run, and report its gap");
  app.add_option("--out", o.out, "Output directory")->capture_default_str();
  app.add_option("--pstar-cache", o.pstar_cache,
                 "Directory caching P* per (data, loss, l1, l2); 'off': no cache")
      ->capture_default_str();
}

std::vector<std::string> check_options(const CLI::App& app, const ErmOptions& o) {
  auto list = parse_methods(o.methods);
  check_directories(app, o);
  if (o.liblinear) {
    TORCH_CHECK(o.loss == "logistic" && ((o.l1 > 0) != (o.l2 > 0)),
                "--liblinear compares pure-L2 (-s 0) or pure-L1 (-s 6) logistic regression");
    TORCH_CHECK(std::system("command -v liblinear-train >/dev/null 2>&1") == 0,
                "liblinear-train not found (Debian liblinear-tools)");
  }
  TORCH_CHECK(o.l1 > 0 || o.l2 > 0 || o.loss == "squares",
              "the logistic problem needs l1 > 0 or l2 > 0 to have a minimiser");
  return list;
}

}  // namespace sgdx_erm

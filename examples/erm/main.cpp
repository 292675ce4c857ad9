// sgdx-erm: elastic-net regularised logistic (or least-squares) regression with
// SGD, SVRG, Katyusha and DASVRDA; log10(P - P*) against passes over the data.
#include <fmt/core.h>
#include <torch/torch.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "../common/cli_checks.h"
#include "pstar_cache.h"
#include "sgdx/data/libsvm.h"
#include "sgdx/optim/accelerated_vr.h"
#include "sgdx/optim/reference_optimum.h"
#include "sgdx/optim/svrg.h"

namespace {

struct Problem {
  at::Tensor a, y;  // float64 [n, d], [n]
  std::string loss;
  double l1 = 0, l2 = 0;
  int64_t n() const { return a.size(0); }
  at::Tensor data_loss(const at::Tensor& w, const at::Tensor& idx) const {
    auto z = a.index_select(0, idx).mv(w);
    auto yi = y.index_select(0, idx);
    if (loss == "squares") return 0.5 * (z - yi).pow(2).mean();
    return torch::nn::functional::softplus(-yi * z).mean();
  }
  double objective(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return data_loss(w, torch::arange(n())).item<double>() + l1 * w.abs().sum().item<double>() +
           0.5 * l2 * w.pow(2).sum().item<double>();
  }
  /// Mean smoothness L-bar = mean_i ||a_i||^2 (x 1/4 for logistic).
  double mean_smoothness() const {
    return a.pow(2).sum(1).mean().item<double>() * (loss == "squares" ? 1.0 : 0.25);
  }
  at::Tensor full_grad(const at::Tensor& w) const {
    auto z = a.mv(w);
    at::Tensor r = loss == "squares" ? (z - y) : -y * torch::sigmoid(-y * z);
    return a.t().mv(r) / double(n());
  }
};

/// P* and its minimiser: certified Newton-CG or proximal Newton (sgdx/optim/reference_optimum.h), cached per
/// problem in `cache_dir` (empty: no cache). Returns the source for the report line.
std::tuple<at::Tensor, double, std::string> reference_optimum(const Problem& p,
                                                              const std::string& cache_dir) {
  const auto o =
      sgdx::optim::ReferenceOptimumOptions()
          .loss(p.loss == "squares" ? sgdx::optim::GlmLoss::squares : sgdx::optim::GlmLoss::logistic)
          .l1(p.l1)
          .l2(p.l2);
  const auto start = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  sgdx_erm::PStarCache cache(cache_dir, p.a, p.y, p.loss, p.l1, p.l2);
  if (auto w = cache.load(p.a.size(1))) {
    const auto [obj, gap] = sgdx::optim::objective_and_gap(p.a, p.y, *w, o);
    if (gap <= 1e-12 * std::abs(obj))
      return {
          *w, obj,
          fmt::format("cached in {}, duality gap re-checked: {:.1e}, {:.2f} s", cache.file, gap, seconds())};
    sgdx_erm::PStarCache::warn(
        fmt::format("ignoring the P* cache file '{}': its minimiser's duality gap is {:.3g} "
                    "(P = {:.17g}); recomputing P*",
                    cache.file, gap, obj));
  }
  const auto r = sgdx::optim::reference_optimum(p.a, p.y, o);
  if (!r.certified())
    sgdx_erm::PStarCache::warn(
        fmt::format("P* is certified only to a duality gap of {:.3g} (relative {:.3g}); not cached", r.gap,
                    r.gap / std::abs(r.objective)));
  else
    cache.save(r.w);
  return {r.w, r.objective,
          fmt::format("{}: {} Newton / {} inner iterations, duality gap {:.1e}, {:.2f} s",
                      p.l1 > 0 ? "proximal Newton" : "Newton-CG", r.newton_iterations, r.inner_iterations,
                      r.gap, seconds())};
}

struct Curve {
  std::string method;
  double lr = 0;
  std::vector<std::pair<double, double>> points;  // (passes, relative gap)
  std::vector<double> seconds;
};

// One run of `method` for `passes` passes; records the gap after every pass.
Curve run_method(const Problem& p, const std::string& method, double lr, int64_t b, double passes,
                 double p_star, uint64_t seed) {
  Curve c{method, lr, {}, {}};
  auto w = torch::zeros({p.a.size(1)}, torch::kDouble).requires_grad_();
  const int64_t n = p.n();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  at::Tensor batch;
  auto full = [&] {
    auto l = p.data_loss(w, torch::arange(n));
    l.backward();
    return l;
  };
  auto mini = [&] {
    auto l = p.data_loss(w, batch);
    l.backward();
    return l;
  };
  auto draw = [&] {
    std::vector<int64_t> idx(b);
    for (auto& i : idx) i = pick(rng);
    batch = torch::tensor(idx, torch::kLong);
  };
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::function<int64_t()> evaluations;
  int64_t sgd_evals = 0;
  if (method == "svrg") {
    auto o = std::make_unique<sgdx::optim::SVRG>(std::vector<at::Tensor>{w},
                                                 sgdx::optim::SVRGOptions(lr).n(n).b(b).l1(p.l1).l2(p.l2));
    o->set_full_gradient_closure(full);
    auto* raw = o.get();
    evaluations = [raw] { return raw->gradient_evaluations(); };
    opt = std::move(o);
  } else if (method == "katyusha") {
    auto o = std::make_unique<sgdx::optim::Katyusha>(
        std::vector<at::Tensor>{w},
        sgdx::optim::KatyushaOptions(1.0 / (3.0 * lr)).n(n).b(b).l1(p.l1).l2(p.l2));
    o->set_full_gradient_closure(full);
    auto* raw = o.get();
    evaluations = [raw] { return raw->gradient_evaluations(); };
    opt = std::move(o);
  } else if (method == "dasvrda") {
    auto o = std::make_unique<sgdx::optim::DASVRDA>(std::vector<at::Tensor>{w},
                                                    sgdx::optim::DASVRDAOptions(p.mean_smoothness())
                                                        .n(n)
                                                        .b(b)
                                                        .lr(lr)
                                                        .l1(p.l1)
                                                        .l2(p.l2)
                                                        .restart(sgdx::optim::Restart::adaptive));
    o->set_full_gradient_closure(full);
    auto* raw = o.get();
    evaluations = [raw] { return raw->gradient_evaluations(); };
    opt = std::move(o);
  } else {
    evaluations = [&] { return sgd_evals; };
  }
  const auto start = std::chrono::steady_clock::now();
  double next = 1.0;
  while (double(evaluations()) < passes * double(n)) {
    draw();
    if (opt) {
      opt->step(mini);
    } else {  // proximal SGD
      w.mutable_grad().reset();
      mini();
      torch::NoGradGuard g;
      auto wd = w.detach();
      wd.sub_(lr * w.grad());
      sgdx::optim::elastic_net_prox_(wd, lr, p.l1, p.l2);
      sgd_evals += b;
    }
    while (double(evaluations()) >= next * double(n)) {
      const double obj = p.objective(w.detach());
      TORCH_CHECK(std::isfinite(obj), method, " diverged with lr ", lr);
      const double gap = (obj - p_star) / std::abs(p_star);
      c.points.emplace_back(next, std::max(gap, 1e-16));
      c.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      next += 1.0;
    }
  }
  return c;
}

double default_lr(const Problem& p, const std::string& method, int64_t b) {
  const double L = p.mean_smoothness();
  if (method == "dasvrda") return sgdx::optim::DASVRDAOptions(L).n(p.n()).b(b).eta();
  if (method == "katyusha") return 1.0 / (3.0 * L);
  return 1.0 / (4.0 * L);  // svrg, sgd
}

constexpr const char* kMethods[] = {"sgd", "svrg", "katyusha", "dasvrda"};

/// `--methods` as a list: no empty list, no empty item, no unknown or repeated method.
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

/// The LIBSVM file `--data` names (after the heart-scale and a9a shortcuts).
std::string data_path(const std::string& data) {
  TORCH_CHECK(!data.empty(), "--data is empty (heart-scale, a9a or a LIBSVM file)");
  std::string path = data;
  if (data == "heart-scale") path = "/usr/share/doc/liblinear-tools/examples/heart_scale";
  if (data == "a9a") {
    const char* d = std::getenv("SGDX_DATA_DIR");
    TORCH_CHECK(d != nullptr && *d != '\0',
                "--data a9a needs SGDX_DATA_DIR (files under $SGDX_DATA_DIR/libsvm/a9a)");
    path = std::string(d) + "/libsvm/a9a";
  }
  return path;
}

/// Beyond what the reader checks (finite values, at least one feature): finite row norms and a
/// nonzero row, so the smoothness and the default step sizes are finite.
void check_data(const at::Tensor& a, const std::string& path) {
  const auto sq = a.pow(2).sum(1);
  const auto overflow = (~torch::isfinite(sq)).nonzero();
  TORCH_CHECK(overflow.size(0) == 0, "LIBSVM file '", path, "': the squared norm of example ",
              overflow.size(0) > 0 ? overflow[0][0].item<int64_t>() + 1 : 0, " overflows float64");
  TORCH_CHECK(sq.max().item<double>() > 0, "LIBSVM file '", path, "': every example is zero, nothing to fit");
}

}  // namespace

int main(int argc, char** argv) {
  namespace checks = sgdx_examples;
  std::string data = "heart-scale", loss = "logistic", methods = "sgd,svrg,katyusha,dasvrda",
              out = "runs/erm";
  double l1 = 0, l2 = 1e-6, passes = 50;
  int64_t batch = 0, features = 0;
  uint64_t seed = 0;
  bool tune = false, no_normalize = false, liblinear = false;
  CLI::App app{"sgdx-erm: regularised ERM with SGD, SVRG, Katyusha and DASVRDA (log gap vs passes)"};
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("sgdx-erm: error: ") + e.what() + " (see --help)\n";
  });
  app.add_option("--data", data,
                 "heart-scale (Debian liblinear-tools), a9a ($SGDX_DATA_DIR/libsvm/a9a) or a LIBSVM file")
      ->capture_default_str();
  app.add_option("--features", features, "Number of features (0: the largest index in the file)")
      ->check(checks::integer(0));
  app.add_option("--loss", loss, "logistic or squares")
      ->check(CLI::IsMember({"logistic", "squares"}))
      ->capture_default_str();
  app.add_option("--l1", l1, "L1 weight lambda1")->check(checks::finite_number(0))->capture_default_str();
  app.add_option("--l2", l2, "L2 weight lambda2")->check(checks::finite_number(0))->capture_default_str();
  app.add_option("--methods", methods, "Comma-separated: sgd, svrg, katyusha, dasvrda")
      ->capture_default_str();
  app.add_option("--passes", passes, "Passes over the data per method (1 to 1e6)")
      ->check(checks::finite_number(1, 1e6))
      ->capture_default_str();
  app.add_option("--batch", batch, "Minibatch size (0: ceil(sqrt(n)))")->check(checks::integer(0));
  app.add_option("--seed", seed, "Seed of the minibatch draws")
      ->check(checks::unsigned_integer())
      ->capture_default_str();
  app.add_flag("--tune", tune,
               "Tune each method's step size on a log grid (x1/4 ... x16 of the default) by final gap");
  app.add_flag("--no-normalize", no_normalize, "Keep rows as they are (default: unit-norm rows)");
  app.add_flag("--liblinear", liblinear,
               "Also time liblinear-train (-s 0 for l2, -s 6 for l1; C = 1/(n lambda), no bias) on the same "
               "(normalised) data in this run, and report its gap");
  app.add_option("--out", out, "Output directory")->capture_default_str();
  std::string pstar_cache = sgdx_erm::default_cache_dir();
  app.add_option("--pstar-cache", pstar_cache,
                 "Directory caching P* per (data, loss, l1, l2); 'off': no cache")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    // Every check runs here, before P*, training or any file written.
    const auto list = parse_methods(methods);
    const auto out_problem = checks::output_directory_problem(out);  // the default too
    TORCH_CHECK(out_problem.empty(), "--out: ", out_problem);
    for (const char* name : {"gap.csv", "gap.gp", "gap.png", "data.libsvm", "liblinear.model"}) {
      std::error_code ec;
      TORCH_CHECK(!std::filesystem::is_directory(out + "/" + name, ec), "--out: '", out, "/", name,
                  "' is a directory, so the result cannot be written there");
    }
    if (app.count("--pstar-cache") > 0 && pstar_cache != "off") {
      const auto why = checks::output_directory_problem(pstar_cache);
      TORCH_CHECK(why.empty(), "--pstar-cache: ", why, " ('off': no cache)");
    }
    if (liblinear) {
      TORCH_CHECK(loss == "logistic" && ((l1 > 0) != (l2 > 0)),
                  "--liblinear compares pure-L2 (-s 0) or pure-L1 (-s 6) logistic regression");
      TORCH_CHECK(std::system("command -v liblinear-train >/dev/null 2>&1") == 0,
                  "liblinear-train not found (Debian liblinear-tools)");
    }
    TORCH_CHECK(l1 > 0 || l2 > 0 || loss == "squares",
                "the logistic problem needs l1 > 0 or l2 > 0 to have a minimiser");
    const std::string path = data_path(data);
    if (data == "a9a" && features == 0) features = 123;
    auto raw = sgdx::data::read_libsvm(path, features);
    check_data(raw.features, path);
    Problem p{raw.features, raw.labels, loss, l1, l2};
    if (!no_normalize) sgdx::data::normalize_rows_(p.a);
    const double smoothness = p.mean_smoothness();
    TORCH_CHECK(std::isfinite(smoothness) && smoothness > 0, "LIBSVM file '", path,
                "': the mean squared row norm is ", smoothness, ", so no step size follows from it");
    const int64_t b = batch > 0 ? batch : static_cast<int64_t>(std::ceil(std::sqrt(double(p.n()))));
    TORCH_CHECK(b <= p.n(), "--batch ", b, " exceeds n = ", p.n());
    const auto [x_star, p_star, p_star_source] =
        reference_optimum(p, pstar_cache == "off" ? "" : pstar_cache);
    fmt::print("sgdx-erm: {} ({} x {}), {} loss, l1 {:g}, l2 {:g}, batch {}; P* = {:.15g} ({})\n", data,
               p.n(), p.a.size(1), loss, l1, l2, b, p_star, p_star_source);
    std::vector<Curve> curves;
    for (const auto& m : list) {
      const double base = default_lr(p, m, b);
      Curve best;
      double best_gap = std::numeric_limits<double>::infinity();
      for (double f : tune ? std::vector<double>{0.25, 0.5, 1, 2, 4, 8, 16} : std::vector<double>{1}) {
        try {
          auto c = run_method(p, m, base * f, b, passes, p_star, seed);
          const double g = c.points.empty() ? 1.0 : c.points.back().second;
          if (g < best_gap) best_gap = g, best = c;
        } catch (const c10::Error&) {  // diverged at this step size
        }
      }
      TORCH_CHECK(!best.points.empty(), m, " diverged at every step size tried");
      curves.push_back(best);
    }
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    TORCH_CHECK(!ec, "cannot create the output directory '", out, "': ", ec.message());
    std::string csv = "method,lr,passes,seconds,relative_gap\n";
    for (const auto& c : curves)
      for (size_t k = 0; k < c.points.size(); ++k)
        csv += fmt::format("{},{:.6g},{},{:.4f},{:.6e}\n", c.method, c.lr, c.points[k].first, c.seconds[k],
                           c.points[k].second);
    sgdx_examples::write_atomically(out + "/gap.csv", csv);
    fmt::print(
        "\n| method | step size | passes to 1e-4 | 1e-6 | 1e-8 | seconds to 1e-6 | final gap "
        "|\n|---|---|---|---|---|---|---|\n");
    for (const auto& c : curves) {
      auto first = [&](double tol) -> std::string {
        for (size_t k = 0; k < c.points.size(); ++k)
          if (c.points[k].second <= tol) return fmt::format("{:g}", c.points[k].first);
        return "-";
      };
      std::string sec = "-";
      for (size_t k = 0; k < c.points.size(); ++k)
        if (c.points[k].second <= 1e-6) {
          sec = fmt::format("{:.2f}", c.seconds[k]);
          break;
        }
      fmt::print("| {} | {:.4g} | {} | {} | {} | {} | {:.2e} |\n", c.method, c.lr, first(1e-4), first(1e-6),
                 first(1e-8), sec, c.points.back().second);
    }
    if (liblinear) {
      // Write the (normalised) rows so both solve the same problem.
      const std::string file = out + "/data.libsvm", model = out + "/liblinear.model";
      {
        std::string rows;
        auto acc = p.a.accessor<double, 2>();
        for (int64_t i = 0; i < p.n(); ++i) {
          rows += p.y[i].item<double>() > 0 ? "+1" : "-1";
          for (int64_t j = 0; j < p.a.size(1); ++j)
            if (acc[i][j] != 0) rows += fmt::format(" {}:{:.17g}", j + 1, acc[i][j]);
          rows += '\n';
        }
        sgdx_examples::write_atomically(file, rows);
      }
      const int solver = l2 > 0 ? 0 : 6;
      const double C = 1.0 / (double(p.n()) * (l2 > 0 ? l2 : l1));
      for (double eps : {1e-2, 1e-4, 1e-6}) {
        const auto start = std::chrono::steady_clock::now();
        const auto cmd = fmt::format("liblinear-train -q -s {} -c {:.17g} -e {:g} '{}' '{}' >/dev/null 2>&1",
                                     solver, C, eps, file, model);
        TORCH_CHECK(std::system(cmd.c_str()) == 0, "liblinear-train failed: ", cmd);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::ifstream in(model);
        std::vector<double> wv;
        bool flip = false, weights = false;
        for (std::string line; std::getline(in, line);) {
          if (line.rfind("label", 0) == 0) flip = line.substr(6, 2) == "-1";
          if (weights && !line.empty()) wv.push_back(std::stod(line));
          if (line == "w") weights = true;
        }
        auto w = torch::tensor(wv, torch::kDouble) * (flip ? -1.0 : 1.0);
        const double gap = (p.objective(w) - p_star) / std::abs(p_star);
        fmt::print("| liblinear -s {} -e {:g} | C = {:.4g} | | | | {:.2f} (whole run) | {:.2e} |\n", solver,
                   eps, C, sec, gap);
      }
    }
    if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
      std::string gp = fmt::format(
          "set terminal pngcairo noenhanced size 900,600\nset output '{0}/gap.png'\nset logscale y\nset "
          "format y '1e%T'\n"
          "set xlabel 'passes over the data'\nset ylabel '(P - P*) / |P*|'\nset grid\nset datafile separator "
          "','\n"
          "set title '{1}: {2}, l1 {3:g}, l2 {4:g}, batch {5}'\nplot ",
          out, data, loss, l1, l2, b);
      for (size_t i = 0; i < curves.size(); ++i)
        gp += fmt::format(
            "{}'{}/gap.csv' using (strcol(1) eq '{}' ? $3 : 1/0):5 with lines lw 2 title '{} (step {:.3g})'",
            i ? ", " : "", out, curves[i].method, curves[i].method, curves[i].lr);
      sgdx_examples::write_atomically(out + "/gap.gp", gp + "\n");
      if (std::system(fmt::format("gnuplot '{}/gap.gp'", out).c_str()) == 0)
        fmt::print("\nplot: {}/gap.png\n", out);
    }
    fmt::print("curves: {}/gap.csv\n", out);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "sgdx-erm: error: %s\n",
                 std::string(e.what_without_backtrace())
                     .substr(0, std::string(e.what_without_backtrace()).find('\n'))
                     .c_str());
    return 1;
  } catch (const std::exception& e) {  // e.g. std::filesystem errors on --out: one line, not an abort
    std::fprintf(stderr, "sgdx-erm: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

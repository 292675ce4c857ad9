#include "report.h"

#include <fmt/core.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

namespace sgdx_train {

std::string metrics_csv(const std::vector<RunResult>& runs) {
  std::string s =
      "optimizer,seed,epoch,steps,train_loss,test_loss,test_accuracy,seconds,head_accuracy,tail_accuracy,"
      "grad_norm_mean,grad_norm_var,quality,tau,val_loss,val_accuracy\n";
  for (const auto& r : runs)
    for (const auto& e : r.epochs)
      s += fmt::format(
          "{},{},{},{},{:.6f},{:.6f},{:.6f},{:.3f},{:.6f},{:.6f},{:.6g},{:.6g},{:.4f},{:.4f},{:.6f},{:.6f}\n",
          r.optimizer, r.seed, e.epoch, e.steps, e.train_loss, e.test_loss, e.test_accuracy, e.seconds,
          e.head_accuracy, e.tail_accuracy, e.grad_norm_mean, e.grad_norm_var, e.quality, e.tau, e.val_loss,
          e.val_accuracy);
  return s;
}

nlohmann::json metrics_json(const nlohmann::json& config, const std::vector<RunResult>& runs) {
  nlohmann::json j;
  j["config"] = config;
  j["runs"] = nlohmann::json::array();
  for (const auto& r : runs) {
    nlohmann::json run = {{"optimizer", r.optimizer}, {"seed", r.seed}, {"epochs", nlohmann::json::array()}};
    if (!r.status.empty()) run["status"] = r.status;
    for (const auto& e : r.epochs)
      run["epochs"].push_back({{"epoch", e.epoch},
                               {"steps", e.steps},
                               {"train_loss", e.train_loss},
                               {"test_loss", e.test_loss},
                               {"test_accuracy", e.test_accuracy},
                               {"val_loss", e.val_loss},
                               {"val_accuracy", e.val_accuracy},
                               {"seconds", e.seconds},
                               {"head_accuracy", e.head_accuracy},
                               {"tail_accuracy", e.tail_accuracy},
                               {"grad_norm_mean", e.grad_norm_mean},
                               {"grad_norm_var", e.grad_norm_var},
                               {"class_accuracy", e.class_accuracy},
                               {"class_loss", e.class_loss},
                               {"quality", e.quality},
                               {"tau", e.tau},
                               {"importance_step_fraction", e.importance_step_fraction}});
    j["runs"].push_back(run);
  }
  return j;
}

namespace {

struct Stat {
  double mean = 0, std = 0;
};

Stat stat(const std::vector<double>& v) {
  Stat s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    for (double x : v) s.std += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(s.std / double(v.size() - 1));
  }
  return s;
}

// Optimizers in order of first appearance, with their runs.
std::vector<std::pair<std::string, std::vector<const RunResult*>>> by_optimizer(
    const std::vector<RunResult>& runs) {
  std::vector<std::pair<std::string, std::vector<const RunResult*>>> out;
  for (const auto& r : runs) {
    auto it = std::find_if(out.begin(), out.end(), [&](auto& p) { return p.first == r.optimizer; });
    if (it == out.end()) {
      out.push_back({r.optimizer, {}});
      it = out.end() - 1;
    }
    it->second.push_back(&r);
  }
  return out;
}

std::string pm(const Stat& s, int digits) {
  return fmt::format("{:.{}f} ± {:.{}f}", s.mean, digits, s.std, digits);
}

}  // namespace

bool has_quality(const std::vector<RunResult>& runs) {
  for (const auto& r : runs)
    if (!r.epochs.empty() && !std::isnan(r.epochs.back().quality)) return true;
  return false;
}

bool has_head_tail(const std::vector<RunResult>& runs) {
  return !runs.empty() && !runs.front().epochs.empty() &&
         !std::isnan(runs.front().epochs.back().tail_accuracy);
}

bool has_validation(const std::vector<RunResult>& runs) {
  for (const auto& r : runs)
    if (!r.epochs.empty() && !std::isnan(r.epochs.back().val_accuracy)) return true;
  return false;
}

std::string summary_table(const std::vector<RunResult>& runs, const std::string& test_note) {
  const bool ht = has_head_tail(runs), hv = has_validation(runs);
  std::string s = "| optimizer | seeds | test accuracy (%) |";
  s += hv ? " validation acc. (%) |" : "";
  s += ht ? " head acc. (%) | tail acc. (%) |" : "";
  const bool hq = has_quality(runs);
  s += " test loss | train loss | grad-norm variance |";
  s += hq ? " Q | tau |" : "";
  s += " seconds |\n|---|---|---|";
  s += hv ? "---|" : "";
  s += ht ? "---|---|" : "";
  s += hq ? "---|---|" : "";
  s += "---|---|---|---|\n";
  for (const auto& [name, rs] : by_optimizer(runs)) {
    std::vector<double> acc, val, head, tail, tl, trl, gv, sec, q, tau;
    for (const auto* r : rs) {
      if (r->epochs.empty()) continue;
      const auto& e = r->epochs.back();
      acc.push_back(100 * e.test_accuracy);
      val.push_back(100 * e.val_accuracy);
      head.push_back(100 * e.head_accuracy);
      tail.push_back(100 * e.tail_accuracy);
      tl.push_back(e.test_loss);
      trl.push_back(e.train_loss);
      sec.push_back(e.seconds);
      q.push_back(std::isnan(e.quality) ? 0.0 : e.quality);
      tau.push_back(e.tau);
      double v = 0;  // mean over epochs of the per-epoch variance
      for (const auto& ep : r->epochs) v += ep.grad_norm_var / double(r->epochs.size());
      gv.push_back(v);
    }
    s += fmt::format("| {} | {} | {} |", name, acc.size(), pm(stat(acc), 2));
    if (hv) s += fmt::format(" {} |", pm(stat(val), 2));
    if (ht) s += fmt::format(" {} | {} |", pm(stat(head), 2), pm(stat(tail), 2));
    s += fmt::format(" {} | {} | {} |", pm(stat(tl), 4), pm(stat(trl), 4), pm(stat(gv), 4));
    if (hq) s += fmt::format(" {} | {} |", pm(stat(q), 3), pm(stat(tau), 2));
    s += fmt::format(" {} |\n", pm(stat(sec), 1));
  }
  for (const auto& r : runs) {
    if (r.status.empty()) continue;
    s += fmt::format("\n{} seed {}: {}; the table shows its last finished epoch ({} of them).", r.optimizer,
                     r.seed, r.status, r.epochs.size());
  }
  if (!test_note.empty()) s += "\n\n" + test_note + ".";
  return s;
}

namespace {

// gnuplot's data: per optimizer a block of rows "epoch, accuracy mean and std, train loss
// mean and std, seconds, head and tail accuracy" (means and stds over seeds).
std::string plot_data(const std::vector<std::pair<std::string, std::vector<const RunResult*>>>& groups) {
  std::string d;
  for (const auto& [name, rs] : groups) {
    d += fmt::format("# {}\n", name);
    const size_t epochs = rs.front()->epochs.size();
    for (size_t e = 0; e < epochs; ++e) {
      std::vector<double> acc, loss, sec;
      for (const auto* r : rs) {
        if (e >= r->epochs.size()) continue;
        acc.push_back(100 * r->epochs[e].test_accuracy);
        loss.push_back(r->epochs[e].train_loss);
        sec.push_back(r->epochs[e].seconds);
      }
      std::vector<double> head, tail;
      for (const auto* r : rs) {
        if (e >= r->epochs.size()) continue;
        head.push_back(100 * r->epochs[e].head_accuracy);
        tail.push_back(100 * r->epochs[e].tail_accuracy);
      }
      const auto a = stat(acc), l = stat(loss), t = stat(sec), h = stat(head), tl = stat(tail);
      d += fmt::format("{} {:.4f} {:.4f} {:.6f} {:.6f} {:.3f} {:.4f} {:.4f}\n", e + 1, a.mean, a.std, l.mean,
                       l.std, t.mean, h.mean, tl.mean);
    }
    d += "\n\n";
  }
  return d;
}

}  // namespace

bool plot_runs(const std::vector<RunResult>& runs, const std::string& png, const std::string& title,
               std::string& why) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    why = "gnuplot not found (install gnuplot-nox)";
    return false;
  }
  const auto groups = by_optimizer(runs);
  const std::string data = png + ".dat";
  // gnuplot's single-quoted strings write a quote as two.
  auto quoted = [](std::string text) {
    for (size_t i = text.find('\''); i != std::string::npos; i = text.find('\'', i + 2))
      text.insert(i, 1, '\'');
    return text;
  };
  // The data, the script and the unfinished image are intermediate: gone on every path
  // (a failed gnuplot keeps only its log, which the message points to).
  struct Cleanup {
    std::string png;
    ~Cleanup() {
      std::error_code ec;
      for (const char* ext : {".dat", ".gp", ".tmp"}) std::filesystem::remove(png + ext, ec);
    }
  } cleanup{png};
  write_atomically(data, plot_data(groups));
  std::string gp = fmt::format(
      "set terminal pngcairo noenhanced size 1400,{} font 'sans,11'\n"
      "set output '{}.tmp'\n"
      "set multiplot layout {},2 title '{}'\n"
      "set grid\nset key bottom right\n",
      has_head_tail(runs) ? 1400 : 1000, png, has_head_tail(runs) ? 3 : 2, quoted(title));
  auto panel = [&](const std::string& xlabel, const std::string& ylabel, int xcol, int ycol, bool log) {
    gp += fmt::format("set xlabel '{}'\nset ylabel '{}'\n{}\nplot ", xlabel, ylabel,
                      log ? "set logscale y" : "unset logscale y");
    for (size_t i = 0; i < groups.size(); ++i)
      gp += fmt::format("{}'{}' index {} using {}:{} with linespoints title '{}'", i ? ", " : "", data, i,
                        xcol, ycol, quoted(groups[i].first));
    gp += "\n";
  };
  panel("epoch", "test accuracy (%)", 1, 2, false);
  panel("epoch", "train loss", 1, 4, true);
  panel("training seconds", "test accuracy (%)", 6, 2, false);
  panel("training seconds", "train loss", 6, 4, true);
  if (has_head_tail(runs)) {
    panel("epoch", "head-class test accuracy (%)", 1, 7, false);
    panel("epoch", "tail-class test accuracy (%)", 1, 8, false);
  }
  gp += "unset multiplot\nset output\n";
  const std::string script = png + ".gp";
  write_atomically(script, gp);
  const int rc = std::system(fmt::format("gnuplot '{}' 2>'{}.log'", script, png).c_str());
  if (rc != 0) {
    why = fmt::format("gnuplot failed (see {}.log)", png);
    return false;
  }
  std::filesystem::rename(png + ".tmp", png);
  std::error_code ec;
  std::filesystem::remove(png + ".log", ec);
  return true;
}

}  // namespace sgdx_train

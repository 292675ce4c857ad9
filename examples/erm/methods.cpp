#include "methods.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <random>

#include "sgdx/optim/accelerated_vr.h"
#include "sgdx/optim/sparse_dasvrda.h"
#include "sgdx/optim/sparse_katyusha.h"
#include "sgdx/optim/sparse_svrg.h"
#include "sgdx/optim/svrg.h"

namespace sgdx_erm {
namespace {

using Closure = std::function<at::Tensor()>;

// An optimizer and its count of per-example gradient evaluations (what a pass is);
// none for proximal SGD, whose loop counts them itself.
struct Stepper {
  std::unique_ptr<torch::optim::Optimizer> opt;
  std::function<int64_t()> evaluations;
};

template <typename VrOptimizer>
Stepper with_full_gradient(std::unique_ptr<VrOptimizer> o, const Closure& full) {
  o->set_full_gradient_closure(full);
  auto* raw = o.get();
  return {std::move(o), [raw] { return raw->gradient_evaluations(); }};
}

Stepper make_stepper(const Problem& p, const std::string& method, double lr, int64_t b, const at::Tensor& w,
                     const Closure& full) {
  namespace so = sgdx::optim;
  const std::vector<at::Tensor> params{w};
  const int64_t n = p.n();
  if (method == "svrg")
    return with_full_gradient(
        std::make_unique<so::SVRG>(params, so::SVRGOptions(lr).n(n).b(b).l1(p.l1).l2(p.l2)), full);
  if (method == "katyusha")
    return with_full_gradient(std::make_unique<so::Katyusha>(
                                  params, so::KatyushaOptions(1.0 / (3.0 * lr)).n(n).b(b).l1(p.l1).l2(p.l2)),
                              full);
  if (method == "dasvrda")
    return with_full_gradient(std::make_unique<so::DASVRDA>(params, so::DASVRDAOptions(p.mean_smoothness())
                                                                        .n(n)
                                                                        .b(b)
                                                                        .lr(lr)
                                                                        .l1(p.l1)
                                                                        .l2(p.l2)
                                                                        .restart(so::Restart::adaptive)),
                              full);
  return {};
}

// One proximal SGD step on the minibatch loss that `mini` evaluates.
void proximal_sgd_step(const Problem& p, at::Tensor& w, const Closure& mini, double lr) {
  w.mutable_grad().reset();
  mini();
  torch::NoGradGuard g;
  auto wd = w.detach();
  wd.sub_(lr * w.grad());
  sgdx::optim::elastic_net_prox_(wd, lr, p.l1, p.l2);
}

}  // namespace

double default_lr(const Problem& p, const std::string& method, int64_t b) {
  const double L = p.mean_smoothness();
  if (method == "dasvrda") return sgdx::optim::DASVRDAOptions(L).n(p.n()).b(b).eta();
  if (method == "katyusha") return 1.0 / (3.0 * L);
  return 1.0 / (4.0 * L);  // svrg, sgd
}

void check_storage(const Problem& p, const std::vector<std::string>& methods) {
  if (!p.sparse()) return;
  for (const auto& m : methods)
    TORCH_CHECK(
        m != "sgd", "--methods ", m,
        ": proximal SGD has no sparse form (its prox touches every coordinate each step) and the data "
        "is held sparse: run it with --storage dense, or run svrg, katyusha and dasvrda");
}

namespace {

// The seconds a method has run, without the per-pass objective evaluations that draw its
// curve (monitoring, not optimisation; the same for the dense and the sparse loops).
class RunClock {
 public:
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count() - excluded_;
  }
  template <typename F>
  auto excluding(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    auto out = f();
    excluded_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  double excluded_ = 0;
};

// The lazy sparse methods (sgdx/optim/sparse_*.h) on CSR data: the same minibatch draws,
// passes and clock as the dense loop below.
Curve run_sparse(const Problem& p, const std::string& method, double lr, int64_t b, double passes,
                 double p_star, uint64_t seed) {
  namespace so = sgdx::optim;
  check_storage(p, {method});
  Curve c{method, lr, {}, {}};
  const int64_t n = p.n();
  // One interface over the three: a step, the iterate, the evaluation count.
  std::function<void(const std::vector<int64_t>&)> step;
  std::function<at::Tensor()> weights;
  std::function<int64_t()> evaluations;
  const auto hold = [&](auto opt) {
    step = [opt](const std::vector<int64_t>& rows) { opt->step(rows); };
    weights = [opt] { return opt->weights(); };
    evaluations = [opt] { return opt->gradient_evaluations(); };
  };
  if (method == "svrg") {
    hold(std::make_shared<so::SparseSVRG>(
        *p.csr,
        so::SparseSVRGOptions{.lr = lr, .b = b, .m = 0, .l1 = p.l1, .l2 = p.l2, .loss = p.glm_loss()}));
  } else if (method == "katyusha") {
    hold(std::make_shared<so::SparseKatyusha>(
        *p.csr, so::KatyushaOptions(1.0 / (3.0 * lr)).n(n).b(b).l1(p.l1).l2(p.l2), p.glm_loss()));
  } else {
    hold(std::make_shared<so::SparseDASVRDA>(*p.csr,
                                             so::DASVRDAOptions(p.mean_smoothness())
                                                 .n(n)
                                                 .b(b)
                                                 .lr(lr)
                                                 .l1(p.l1)
                                                 .l2(p.l2)
                                                 .restart(so::Restart::adaptive),
                                             p.glm_loss()));
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  RunClock clock;
  double next = 1.0;
  std::vector<int64_t> idx(b);
  while (double(evaluations()) < passes * double(n)) {
    for (auto& i : idx) i = pick(rng);
    step(idx);
    for (; double(evaluations()) >= next * double(n); next += 1.0) {  // a pass completed
      const double obj = clock.excluding([&] { return p.objective(weights()); });
      TORCH_CHECK(std::isfinite(obj), method, " diverged with lr ", lr);
      c.points.emplace_back(next, std::max((obj - p_star) / std::abs(p_star), 1e-16));
      c.seconds.push_back(clock.seconds());
    }
  }
  return c;
}

}  // namespace

Curve run_method(const Problem& p, const std::string& method, double lr, int64_t b, double passes,
                 double p_star, uint64_t seed) {
  if (p.sparse()) return run_sparse(p, method, lr, b, passes, p_star, seed);
  Curve c{method, lr, {}, {}};
  auto w = torch::zeros({p.d()}, torch::kDouble).requires_grad_();
  const int64_t n = p.n();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> pick(0, n - 1);
  at::Tensor batch;
  const Closure full = [&] {
    auto l = p.data_loss(w, torch::arange(n));
    l.backward();
    return l;
  };
  const Closure mini = [&] {
    auto l = p.data_loss(w, batch);
    l.backward();
    return l;
  };
  auto s = make_stepper(p, method, lr, b, w, full);
  int64_t sgd_evals = 0;
  auto evaluations = [&] { return s.opt ? s.evaluations() : sgd_evals; };
  RunClock clock;
  double next = 1.0;
  while (double(evaluations()) < passes * double(n)) {
    std::vector<int64_t> idx(b);
    for (auto& i : idx) i = pick(rng);
    batch = torch::tensor(idx, torch::kLong);
    if (s.opt) {
      s.opt->step(mini);
    } else {
      proximal_sgd_step(p, w, mini, lr);
      sgd_evals += b;
    }
    for (; double(evaluations()) >= next * double(n); next += 1.0) {  // a pass completed
      const double obj = clock.excluding([&] { return p.objective(w.detach()); });
      TORCH_CHECK(std::isfinite(obj), method, " diverged with lr ", lr);
      const double gap = (obj - p_star) / std::abs(p_star);
      c.points.emplace_back(next, std::max(gap, 1e-16));
      c.seconds.push_back(clock.seconds());
    }
  }
  return c;
}

Curve best_curve(const Problem& p, const std::string& method, int64_t b, double passes, double p_star,
                 uint64_t seed, bool tune, double scale) {
  const double base = default_lr(p, method, b) * scale;
  Curve best;
  double best_gap = std::numeric_limits<double>::infinity();
  for (double f : tune ? std::vector<double>{0.25, 0.5, 1, 2, 4, 8, 16} : std::vector<double>{1}) {
    try {
      auto c = run_method(p, method, base * f, b, passes, p_star, seed);
      const double g = c.points.empty() ? 1.0 : c.points.back().second;
      if (g < best_gap) best_gap = g, best = c;
    } catch (const c10::Error&) {  // diverged at this step size
    }
  }
  TORCH_CHECK(!best.points.empty(), method, " diverged at every step size tried");
  return best;
}

}  // namespace sgdx_erm

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "sgdx/data/libsvm.h"
#include "sgdx/optim/dasvrda.h"
#include "sgdx/optim/katyusha.h"
#include "sgdx/optim/sparse_dasvrda.h"
#include "sgdx/optim/sparse_katyusha.h"
#include "sgdx/optim/sparse_svrg.h"
#include "sgdx/optim/svrg.h"
#include "test_util.h"

using sgdx::optim::GlmLoss;
using sgdx::optim::SparseSVRG;
using sgdx::optim::SparseSVRGOptions;

namespace {

// k steps of T(z) = prox(z - c), applied one at a time (the dense algorithm's way).
double brute_force(double z, double c, double s, double r, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
    const double u = z - c;
    z = (u > 0 ? 1.0 : u < 0 ? -1.0 : 0.0) * std::max(std::abs(u) - s, 0.0) / (1 + r);
  }
  return z;
}

// A random sparse problem: n rows over d features, about `per_row` non-zeros a row, as
// LIBSVM text (so the CSR comes from the reader) and as its dense float64 matrix.
sgdx::data::LibsvmCsr random_problem(int64_t n, int64_t d, int64_t per_row, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> value(-1.0, 1.0);
  std::bernoulli_distribution take(double(per_row) / double(d));
  std::string text;
  for (int64_t i = 0; i < n; ++i) {
    text += (rng() % 2 != 0) ? "+1" : "-1";
    for (int64_t j = 1; j <= d; ++j)
      if (take(rng)) text += " " + std::to_string(j) + ":" + std::to_string(value(rng));
    text += "\n";
  }
  return sgdx::data::parse_libsvm_csr(text, "random.svm", d);
}

}  // namespace

// The closed form against k single steps, on every piece and crossing of T: starts on
// either side, fixed points inside and outside each piece, no l1 or no l2, k up to 10^4.
TEST(RepeatedProxStep, EqualsTheStepsOneByOne) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  int checked = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const double z = 3 * u(rng), c = 0.2 * u(rng);
    const double s = trial % 4 == 0 ? 0.0 : 0.1 * std::abs(u(rng));
    const double r = trial % 3 == 0 ? 0.0 : 0.05 * std::abs(u(rng));
    const int64_t k = trial % 5 == 0 ? int64_t(rng() % 10000) : int64_t(rng() % 60);
    const double want = brute_force(z, c, s, r, k);
    const double got = sgdx::optim::detail::repeated_prox_step(z, c, s, r, k);
    ASSERT_NEAR(got, want, 1e-10 * (1 + std::abs(want)) + 1e-13 * double(k))
        << "z=" << z << " c=" << c << " s=" << s << " r=" << r << " k=" << k;
    if (want == 0) ASSERT_EQ(got, 0.0) << "an exact zero of the prox stays exact";
    ++checked;
  }
  EXPECT_EQ(checked, 4000);
  SGDX_EXPECT_THROW_MSG(sgdx::optim::detail::repeated_prox_step(1, 0, -1, 0, 3), "eta_l1=-1");
}

// Lazy sparse SVRG against the dense SVRG optimizer (sgdx/optim/svrg.h) on the same data,
// batches and steps: the iterates agree to rounding for both losses and every (l1, l2).
// Compared at the stages' ends, so that in between coordinates miss runs of up to m steps.
TEST(SparseSVRG, EqualsTheDenseOptimizer) {
  const int64_t n = 60, d = 200, b = 2, m = 40;
  const auto csr = random_problem(n, d, 3, 3);
  const auto dense = csr.to_dense();
  for (const auto loss : {GlmLoss::logistic, GlmLoss::squares}) {
    for (const auto& [l1, l2] :
         std::vector<std::pair<double, double>>{{0, 0}, {0.01, 0}, {0, 0.05}, {0.01, 0.05}}) {
      const double lr = 0.3;
      SparseSVRG sparse(csr, {.lr = lr, .b = b, .m = m, .l1 = l1, .l2 = l2, .loss = loss});
      auto w = torch::zeros({d}, torch::kDouble).requires_grad_();
      sgdx::optim::SVRG opt({w}, sgdx::optim::SVRGOptions(lr).n(n).b(b).m(m).l1(l1).l2(l2));
      const auto batch_loss = [&](const at::Tensor& idx) {
        auto z = dense.index_select(0, idx).mv(w);
        auto y = csr.labels.index_select(0, idx);
        auto l = loss == GlmLoss::squares ? 0.5 * (z - y).pow(2).mean()
                                          : torch::nn::functional::softplus(-y * z).mean();
        l.backward();
        return l;
      };
      opt.set_full_gradient_closure([&] { return batch_loss(torch::arange(n)); });
      std::mt19937_64 rng(11);
      for (int64_t t = 0; t < 3 * m; ++t) {
        std::vector<int64_t> rows(b);
        for (auto& i : rows) i = int64_t(rng() % n);
        const auto idx = torch::tensor(rows, torch::kLong);
        opt.step([&] {
          opt.zero_grad();
          return batch_loss(idx);
        });
        sparse.step(rows);
        if (t % m != m - 1) continue;  // read at a stage's end: in between the missed runs grow
        const auto x = sparse.weights();
        ASSERT_TRUE(torch::allclose(x, w.detach(), 1e-11, 1e-13))
            << "loss " << int(loss) << " l1=" << l1 << " l2=" << l2 << " step " << t << "\n"
            << (x - w.detach()).abs().max().item<double>();
        if (l1 > 0) EXPECT_TRUE(torch::equal(x == 0, w.detach() == 0)) << "the same exact zeros";
      }
      EXPECT_EQ(sparse.gradient_evaluations(), opt.gradient_evaluations());
      EXPECT_EQ(sparse.stage(), 3);
    }
  }
}

// weights() between steps brings the untouched coordinates forward without changing the
// run: a run that reads the iterate every step equals one that reads it only at the end.
TEST(SparseSVRG, ReadingTheIterateDoesNotChangeTheRun) {
  const auto csr = random_problem(50, 300, 4, 5);
  SparseSVRGOptions o{.lr = 0.5, .b = 3, .m = 9, .l1 = 0.002, .l2 = 0.01};
  SparseSVRG a(csr, o), c(csr, o);
  std::mt19937_64 rng(2);
  for (int t = 0; t < 40; ++t) {
    std::vector<int64_t> rows = {int64_t(rng() % 50), int64_t(rng() % 50), int64_t(rng() % 50)};
    a.step(rows);
    c.step(rows);
    (void)a.weights();
  }
  EXPECT_TRUE(torch::allclose(a.weights(), c.weights(), 1e-12, 1e-14));
}

TEST(SparseSVRG, BadInputIsRefusedByName) {
  const auto csr = random_problem(5, 4, 2, 1);
  SGDX_EXPECT_THROW_MSG(SparseSVRG(csr, {.lr = 0}), "lr must be positive, got 0");
  SGDX_EXPECT_THROW_MSG(SparseSVRG(csr, {.lr = 1, .b = 0}), "b must be >= 1, got 0");
  SGDX_EXPECT_THROW_MSG(SparseSVRG(csr, {.lr = 1, .l1 = -1}), "l1=-1");
  SparseSVRG ok(csr, {.lr = 1});
  SGDX_EXPECT_THROW_MSG(ok.step({5}), "row 5 is out of range [0, 5)");
  SGDX_EXPECT_THROW_MSG(ok.step({}), "the batch is empty");
}

// Lazy sparse DASVRDA against the dense DASVRDA optimizer on the same data, batches and
// steps, for both losses, every (l1, l2) and each restart rule; m = 150 so that missed runs
// longer than the step-by-step limit (2) go through the prefix tables. A second sparse
// optimizer reads its iterate after every step (runs of one step): reading changes nothing.
TEST(SparseDASVRDA, EqualsTheDenseOptimizer) {
  using sgdx::optim::DASVRDAOptions;
  using sgdx::optim::Restart;
  const int64_t n = 80, d = 300, b = 2, m = 150;
  const auto csr = random_problem(n, d, 3, 9);
  const auto dense = csr.to_dense();
  int compared = 0;
  for (const auto loss : {GlmLoss::logistic, GlmLoss::squares}) {
    for (const auto& [l1, l2] :
         std::vector<std::pair<double, double>>{{0, 0}, {0.002, 0}, {0, 0.05}, {0.002, 0.05}}) {
      for (const auto restart : {Restart::adaptive, Restart::none, Restart::periodic}) {
        const auto o =
            DASVRDAOptions(1.0).n(n).b(b).m(m).lr(0.2).l1(l1).l2(l2).restart(restart).restart_period(2);
        sgdx::optim::SparseDASVRDA sparse(csr, o, loss), reader(csr, o, loss);
        auto w = torch::zeros({d}, torch::kDouble).requires_grad_();
        sgdx::optim::DASVRDA opt({w}, o);
        const auto batch_loss = [&](const at::Tensor& idx) {
          auto z = dense.index_select(0, idx).mv(w);
          auto y = csr.labels.index_select(0, idx);
          auto l = loss == GlmLoss::squares ? 0.5 * (z - y).pow(2).mean()
                                            : torch::nn::functional::softplus(-y * z).mean();
          l.backward();
          return l;
        };
        opt.set_full_gradient_closure([&] { return batch_loss(torch::arange(n)); });
        std::mt19937_64 rng(13);
        for (int64_t t = 0; t < 4 * m + 5; ++t) {
          std::vector<int64_t> rows(b);
          for (auto& i : rows) i = int64_t(rng() % n);
          const auto idx = torch::tensor(rows, torch::kLong);
          opt.step([&] {
            opt.zero_grad();
            return batch_loss(idx);
          });
          sparse.step(rows);
          reader.step(rows);
          (void)reader.weights();  // every step: no missed run, every coordinate read
          // Compared at the stages' ends only (which bring every coordinate up to date anyway),
          // so that in between the missed runs grow past the step-by-step limit.
          if (t % m == m - 1) {
            const auto x = sparse.weights();
            ASSERT_TRUE(torch::allclose(x, w.detach(), 1e-9, 1e-12))
                << "loss " << int(loss) << " l1=" << l1 << " l2=" << l2 << " restart " << int(restart)
                << " step " << t << ": " << (x - w.detach()).abs().max().item<double>();
            ++compared;
          }
        }
        EXPECT_TRUE(torch::allclose(sparse.weights(), w.detach(), 1e-9, 1e-12));
        EXPECT_TRUE(torch::allclose(reader.weights(), w.detach(), 1e-9, 1e-12));
        EXPECT_EQ(sparse.gradient_evaluations(), opt.gradient_evaluations());
        EXPECT_EQ(sparse.restarts(), opt.restarts()) << int(restart);
        if (restart == Restart::periodic) EXPECT_GT(sparse.restarts(), 0);
      }
    }
  }
  EXPECT_EQ(compared, 2 * 4 * 3 * 4);
}

TEST(SparseDASVRDA, BadInputIsRefusedByName) {
  const auto csr = random_problem(5, 4, 2, 1);
  using sgdx::optim::DASVRDAOptions;
  SGDX_EXPECT_THROW_MSG(sgdx::optim::SparseDASVRDA(csr, DASVRDAOptions(1.0).n(6), GlmLoss::logistic),
                        "options.n (6) must be the data's rows (5)");
  SGDX_EXPECT_THROW_MSG(sgdx::optim::SparseDASVRDA(csr, DASVRDAOptions(1.0).n(5).l1(-1), GlmLoss::logistic),
                        "l1 must be >= 0, got -1");
  sgdx::optim::SparseDASVRDA ok(csr, DASVRDAOptions(1.0).n(5), GlmLoss::logistic);
  SGDX_EXPECT_THROW_MSG(ok.step({7}), "row 7 is out of range [0, 5)");
  SGDX_EXPECT_THROW_MSG(ok.step({}), "the batch is empty");
}

// Lazy sparse Katyusha against the dense Katyusha optimizer on the same data, batches and
// steps, for both losses, every (l1, l2) (l2 > 0 and l2 = 0 take different tau1 rules) and
// the default and a set step; m = 150, compared at stage ends only, so that missed runs
// grow long (with l1 = 0 every run goes through the tables, with l1 > 0 step by step). A
// second sparse optimizer reads its iterate after every step (runs of one step): reading
// changes nothing.
TEST(SparseKatyusha, EqualsTheDenseOptimizer) {
  using sgdx::optim::KatyushaOptions;
  const int64_t n = 80, d = 300, b = 2, m = 150;
  const auto csr = random_problem(n, d, 3, 9);
  const auto dense = csr.to_dense();
  int compared = 0;
  for (const auto loss : {GlmLoss::logistic, GlmLoss::squares}) {
    for (const auto& [l1, l2] :
         std::vector<std::pair<double, double>>{{0, 0}, {0.002, 0}, {0, 0.05}, {0.002, 0.05}}) {
      for (const double lr : {0.0, 0.2}) {
        const auto o = KatyushaOptions(1.0).n(n).b(b).m(m).lr(lr).l1(l1).l2(l2);
        sgdx::optim::SparseKatyusha sparse(csr, o, loss), reader(csr, o, loss);
        auto w = torch::zeros({d}, torch::kDouble).requires_grad_();
        sgdx::optim::Katyusha opt({w}, o);
        const auto batch_loss = [&](const at::Tensor& idx) {
          auto z = dense.index_select(0, idx).mv(w);
          auto y = csr.labels.index_select(0, idx);
          auto l = loss == GlmLoss::squares ? 0.5 * (z - y).pow(2).mean()
                                            : torch::nn::functional::softplus(-y * z).mean();
          l.backward();
          return l;
        };
        opt.set_full_gradient_closure([&] { return batch_loss(torch::arange(n)); });
        std::mt19937_64 rng(17);
        for (int64_t t = 0; t < 4 * m + 5; ++t) {
          std::vector<int64_t> rows(b);
          for (auto& i : rows) i = int64_t(rng() % n);
          const auto idx = torch::tensor(rows, torch::kLong);
          opt.step([&] {
            opt.zero_grad();
            return batch_loss(idx);
          });
          sparse.step(rows);
          reader.step(rows);
          (void)reader.weights();
          if (t % m == m - 1) {
            const auto y = sparse.weights();
            ASSERT_TRUE(torch::allclose(y, w.detach(), 1e-9, 1e-12))
                << "loss " << int(loss) << " l1=" << l1 << " l2=" << l2 << " lr " << lr << " step " << t
                << ": " << (y - w.detach()).abs().max().item<double>();
            ++compared;
          }
        }
        EXPECT_TRUE(torch::allclose(sparse.weights(), w.detach(), 1e-9, 1e-12));
        EXPECT_TRUE(torch::allclose(reader.weights(), w.detach(), 1e-9, 1e-12));
        EXPECT_GT(w.detach().abs().max().item<double>(), 1e-3);  // the run moved
        EXPECT_EQ(sparse.gradient_evaluations(), opt.gradient_evaluations());
        EXPECT_EQ(sparse.stage(), 5);  // 4 m + 5 steps: the fifth stage has begun
      }
    }
  }
  EXPECT_EQ(compared, 2 * 4 * 2 * 4);
}

TEST(SparseKatyusha, BadInputIsRefusedByName) {
  const auto csr = random_problem(5, 4, 2, 1);
  using sgdx::optim::KatyushaOptions;
  SGDX_EXPECT_THROW_MSG(sgdx::optim::SparseKatyusha(csr, KatyushaOptions(1.0).n(6), GlmLoss::logistic),
                        "options.n (6) must be the data's rows (5)");
  SGDX_EXPECT_THROW_MSG(sgdx::optim::SparseKatyusha(csr, KatyushaOptions(1.0).n(5).l2(-1), GlmLoss::logistic),
                        "l2 must be >= 0, got -1");
  sgdx::optim::SparseKatyusha ok(csr, KatyushaOptions(1.0).n(5), GlmLoss::logistic);
  SGDX_EXPECT_THROW_MSG(ok.step({7}), "row 7 is out of range [0, 5)");
  SGDX_EXPECT_THROW_MSG(ok.step({}), "the batch is empty");
  // (1 + alpha l2)^m overflows: refused by name, where the dense optimizer would go to inf/NaN.
  sgdx::optim::SparseKatyusha overflow(csr, KatyushaOptions(1e-3).n(5).m(5000).l2(1.0), GlmLoss::logistic);
  SGDX_EXPECT_THROW_MSG(overflow.step({0}), "the snapshot weights (1 + alpha l2)^j overflow");
}

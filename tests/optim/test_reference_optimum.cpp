// The certified reference optimum (Newton-CG; proximal Newton for l1 > 0) against a long float64 FISTA run,
// a closed-form least-squares solve, and liblinear (Debian liblinear-tools).
#include "sgdx/optim/reference_optimum.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "logistic_problem.h"
#include "sgdx/data/libsvm.h"
#include "test_util.h"

namespace {
using sgdx::optim::GlmLoss;
using sgdx::optim::ReferenceOptimumOptions;

double objective(const at::Tensor& a, const at::Tensor& y, const at::Tensor& w,
                 const ReferenceOptimumOptions& o) {
  auto z = a.mv(w);
  const double loss = o.loss() == GlmLoss::logistic ? torch::softplus(-y * z).mean().item<double>()
                                                    : 0.5 * (z - y).pow(2).mean().item<double>();
  return loss + o.l1() * w.abs().sum().item<double>() + 0.5 * o.l2() * w.dot(w).item<double>();
}

// An independent solver: FISTA with gradient-based adaptive restart, exact prox, step 1/L.
at::Tensor fista(const at::Tensor& a, const at::Tensor& y, const ReferenceOptimumOptions& o, int iters) {
  const double n = double(a.size(0));
  const double L = torch::linalg_eigvalsh(a.t().mm(a)).max().item<double>() / n *
                   (o.loss() == GlmLoss::logistic ? 0.25 : 1.0);
  const double step = 1.0 / L;
  auto x = torch::zeros({a.size(1)}, torch::kDouble), z = x.clone();
  double t = 1;
  for (int k = 0; k < iters; ++k) {
    auto u = a.mv(z);
    auto r = o.loss() == GlmLoss::logistic ? -y * torch::sigmoid(-y * u) : u - y;
    auto v = z - step * a.t().mv(r) / n;
    auto xn = torch::sign(v) * torch::clamp_min(v.abs() - step * o.l1(), 0.0) / (1 + step * o.l2());
    if (((z - xn) * (xn - x)).sum().item<double>() > 0) t = 1;
    const double tn = (1 + std::sqrt(1 + 4 * t * t)) / 2;
    z = xn + ((t - 1) / tn) * (xn - x);
    x = xn;
    t = tn;
  }
  return x;
}

void expect_matches_fista(const at::Tensor& a, const at::Tensor& y, const ReferenceOptimumOptions& o,
                          const std::string& what) {
  const auto r = sgdx::optim::reference_optimum(a, y, o);
  const auto w_ref = fista(a, y, o, 20000);
  const double p_ref = objective(a, y, w_ref, o);
  EXPECT_TRUE(r.certified()) << what << ": gap " << r.gap << " at P " << r.objective;
  EXPECT_NEAR(r.objective, objective(a, y, r.w, o), 1e-15) << what;
  EXPECT_NEAR(r.objective, p_ref, 1e-10 * std::abs(p_ref)) << what;
  EXPECT_GE(p_ref, r.objective - r.gap - 1e-15) << what << ": FISTA went below the certified bound";
  EXPECT_LT((r.w - w_ref).norm().item<double>(), 1e-5 * (1 + w_ref.norm().item<double>())) << what;
}

}  // namespace

TEST(ReferenceOptimum, LogisticMatchesLongFista) {
  sgdx::testing::Logistic p(300, 12, 0, 0, 7);
  expect_matches_fista(p.a, p.y, ReferenceOptimumOptions().l2(1e-2), "L2");
  expect_matches_fista(p.a, p.y, ReferenceOptimumOptions().l1(5e-3).l2(1e-2), "elastic net");
  expect_matches_fista(p.a, p.y, ReferenceOptimumOptions().l1(1e-2), "L1 only");
}

TEST(ReferenceOptimum, ElasticNetHasZerosAndMatrixFreeAgrees) {
  sgdx::testing::Logistic p(300, 12, 0, 0, 8);
  const auto o = ReferenceOptimumOptions().l1(2e-2).l2(1e-3);
  const auto r = sgdx::optim::reference_optimum(p.a, p.y, o);
  const auto m = sgdx::optim::reference_optimum(p.a, p.y, ReferenceOptimumOptions(o).form_hessian(false));
  EXPECT_GT((r.w == 0).sum().item<int64_t>(), 0);
  EXPECT_TRUE(torch::equal(r.w == 0, m.w == 0));
  EXPECT_NEAR(r.objective, m.objective, 1e-13 * std::abs(r.objective));
  EXPECT_TRUE(m.certified()) << m.gap;
  // Sparse data go through the same products.
  const auto s = sgdx::optim::reference_optimum(p.a.to_sparse(), p.y, ReferenceOptimumOptions(o));
  EXPECT_NEAR(s.objective, r.objective, 1e-13 * std::abs(r.objective));
}

TEST(ReferenceOptimum, LeastSquaresMatchesClosedFormAndFista) {
  sgdx::testing::Logistic p(200, 10, 0, 0, 9);
  const auto y = p.a.mv(torch::randn({10}, torch::kDouble)) + 0.1 * torch::randn({200}, torch::kDouble);
  const auto o = ReferenceOptimumOptions().loss(GlmLoss::squares).l2(1e-3);
  const auto r = sgdx::optim::reference_optimum(p.a, y, o);
  const auto h = p.a.t().mm(p.a) / 200.0 + 1e-3 * torch::eye(10, torch::kDouble);
  const auto w = torch::linalg_solve(h, p.a.t().mv(y) / 200.0);
  const double p_ref = objective(p.a, y, w, o);
  EXPECT_NEAR(r.objective, p_ref, 1e-12 * p_ref);
  EXPECT_TRUE(r.certified()) << r.gap;
  EXPECT_LE(r.newton_iterations, 2);  // one CG solve (plus at most one polishing step)
  expect_matches_fista(p.a, y, ReferenceOptimumOptions(o).l1(1e-3), "least squares, elastic net");
}

TEST(ReferenceOptimum, GapBoundsSuboptimality) {
  sgdx::testing::Logistic p(300, 12, 0, 0, 10);
  for (const auto& o : {ReferenceOptimumOptions().l2(1e-2), ReferenceOptimumOptions().l1(1e-2)}) {
    const auto r = sgdx::optim::reference_optimum(p.a, p.y, o);
    for (double scale : {0.0, 0.5, 0.9, 0.999}) {
      const auto w = scale * r.w;
      const auto [obj, gap] = sgdx::optim::objective_and_gap(p.a, p.y, w, o);
      EXPECT_GE(gap, obj - r.objective - 1e-15) << scale;
      EXPECT_GE(obj - r.objective, 0.0) << scale;
    }
  }
}

TEST(ReferenceOptimum, BadArgumentsNameTheValue) {
  auto a = torch::zeros({4, 2}, torch::kDouble), y = torch::ones({4}, torch::kDouble);
  SGDX_EXPECT_THROW_MSG(sgdx::optim::reference_optimum(a, y, ReferenceOptimumOptions()),
                        "needs l1 > 0 or l2 > 0");
  SGDX_EXPECT_THROW_MSG(sgdx::optim::reference_optimum(a, y, ReferenceOptimumOptions().l1(-1)), "got -1");
  SGDX_EXPECT_THROW_MSG(
      sgdx::optim::reference_optimum(a.to(torch::kFloat), y, ReferenceOptimumOptions().l2(1)),
      "A must be float64");
  SGDX_EXPECT_THROW_MSG(
      sgdx::optim::reference_optimum(a, torch::ones({3}, torch::kDouble), ReferenceOptimumOptions().l2(1)),
      "y must be float64 [4]");
}

namespace {
bool have_liblinear() {
  return std::system("command -v liblinear-train >/dev/null 2>&1") == 0;
}

at::Tensor liblinear_weights(const std::string& data, int solver, double C, double eps,
                             const sgdx::testing::TempDir& dir) {
  const std::string model = dir.file("model");
  char c[64];
  std::snprintf(c, sizeof(c), "%.17g", C);
  const std::string cmd = "liblinear-train -q -s " + std::to_string(solver) + " -c " + c + " -e " +
                          std::to_string(eps) + " '" + data + "' '" + model + "' > /dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(model);
  bool flip = false, weights = false;
  std::vector<double> w;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("label", 0) == 0) flip = line.substr(6, 2) == "-1";
    if (weights && !line.empty()) w.push_back(std::stod(line));
    if (line == "w") weights = true;
  }
  auto t = torch::tensor(w, torch::kDouble);
  return flip ? -t : t;
}

// liblinear: reg(w) + C sum_i loss_i, i.e. n C times P with lambda = 1 / (n C); no bias.
void expect_agrees_with_liblinear(const std::string& file, int64_t features) {
  sgdx::testing::TempDir dir;
  auto d = sgdx::data::read_libsvm(file, features);
  const double n = double(d.features.size(0)), C = 1.0;
  for (int solver : {0, 6}) {
    const auto o =
        solver == 0 ? ReferenceOptimumOptions().l2(1 / (n * C)) : ReferenceOptimumOptions().l1(1 / (n * C));
    const auto r = sgdx::optim::reference_optimum(d.features, d.labels, o);
    EXPECT_TRUE(r.certified()) << r.gap;
    const auto w_ll = liblinear_weights(file, solver, C, 1e-6, dir);
    ASSERT_EQ(w_ll.numel(), features);
    const double p_ll = objective(d.features, d.labels, w_ll, o);
    // liblinear stops at its own tolerance: its objective is above P*, by little.
    EXPECT_GE(p_ll, r.objective - r.gap - 1e-15) << file << " -s " << solver;
    EXPECT_NEAR(p_ll, r.objective, 1e-6 * r.objective) << file << " -s " << solver;
    // Only the L2 problem is strongly convex (a9a's one-hot columns are linearly dependent).
    if (solver == 0)
      EXPECT_LT((r.w - w_ll).norm().item<double>(), 1e-2 * (1 + r.w.norm().item<double>())) << file;
  }
}

}  // namespace

TEST(ReferenceOptimum, HeartScaleAgreesWithLiblinearAndFista) {
  const std::string file = "/usr/share/doc/liblinear-tools/examples/heart_scale";
  if (!have_liblinear() || !std::filesystem::exists(file))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  expect_agrees_with_liblinear(file, 13);
  // Elastic net (liblinear has none): against the long FISTA run.
  auto d = sgdx::data::read_libsvm(file, 13);
  expect_matches_fista(d.features, d.labels, ReferenceOptimumOptions().l1(1e-3).l2(1e-3),
                       "heart_scale elastic net");
  expect_matches_fista(d.features, d.labels, ReferenceOptimumOptions().l2(1 / 270.0), "heart_scale L2");
}

TEST(ReferenceOptimum, A9aAgreesWithLiblinearWhenPresent) {
  const auto root = sgdx::testing::data_dir();
  if (!have_liblinear() || root.empty() || !std::filesystem::exists(root + "/libsvm/a9a"))
    GTEST_SKIP() << "liblinear-tools or SGDX_DATA_DIR/libsvm/a9a absent";
  expect_agrees_with_liblinear(root + "/libsvm/a9a", 123);
}

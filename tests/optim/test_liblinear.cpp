// Optimum agreement with liblinear (Debian liblinear-tools): -s 0 (L2 logistic) and
// -s 6 (L1 logistic), objective converted to sgdx's scaling:
//   liblinear: reg(w) + C sum_i log(1 + exp(-y_i w.x_i))   ==   n C [ (1/n) sum ... + reg(w) / (n C) ]
// so lambda = 1 / (n C). No bias term (-B -1, liblinear's default).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <random>
#include <sstream>

#include "logistic_problem.h"
#include "sgdx/data/libsvm.h"
#include "sgdx/optim/accelerated_vr.h"
#include "sgdx/optim/svrg.h"
#include "test_util.h"

namespace {

struct Erm {
  at::Tensor a, y;
  double l1 = 0, l2 = 0;
  at::Tensor loss(const at::Tensor& w, const at::Tensor& idx) const {
    return torch::nn::functional::softplus(-y.index_select(0, idx) * a.index_select(0, idx).mv(w)).mean();
  }
  double objective(const at::Tensor& w) const {
    torch::NoGradGuard g;
    return loss(w, torch::arange(a.size(0))).item<double>() + l1 * w.abs().sum().item<double>() +
           0.5 * l2 * w.pow(2).sum().item<double>();
  }
};

// liblinear's weights; its w belongs to the first label of the file, so a file
// starting with -1 gets its sign flipped.
at::Tensor liblinear_weights(const std::string& data, int solver, double C,
                             const sgdx::testing::TempDir& dir) {
  const std::string model = dir.file("model");
  const std::string cmd = "liblinear-train -q -s " + std::to_string(solver) + " -c " + std::to_string(C) +
                          " -e 1e-9 '" + data + "' '" + model + "' > /dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(model);
  std::string line;
  bool flip = false, weights = false;
  std::vector<double> w;
  while (std::getline(in, line)) {
    if (line.rfind("label", 0) == 0) flip = line.substr(6, 2) == "-1";
    if (weights && !line.empty()) w.push_back(std::stod(line));
    if (line == "w") weights = true;
  }
  auto t = torch::tensor(w, torch::kDouble);
  return flip ? -t : t;
}

// Runs an sgdx method through closures for `passes` passes.
template <typename Opt>
at::Tensor solve(Opt& opt, const Erm& p, at::Tensor& w, int64_t b, double passes) {
  std::mt19937_64 rng(0);
  while (double(opt.gradient_evaluations()) < passes * double(p.a.size(0)))
    sgdx::testing::run_vr(opt, p, w, 1, rng, b);
  return w.detach();
}

// SVRG is checked where it converges in a test's time (it is the slow one on these
// weakly regularised problems, lambda = 1/n; see docs/results/vr.md).
void check_agreement(const std::string& file, int64_t features, double passes, bool with_svrg) {
  sgdx::testing::TempDir dir;
  auto d = sgdx::data::read_libsvm(file, features);
  const int64_t n = d.features.size(0), dim = d.features.size(1);
  const int64_t b = static_cast<int64_t>(std::ceil(std::sqrt(double(n))));
  const double L =
      d.features.pow(2).sum(1).mean().item<double>() / 4;  // mean smoothness of the logistic terms
  for (int solver : {0, 6}) {
    const double C = 1.0;
    Erm p{d.features, d.labels, solver == 6 ? 1.0 / (double(n) * C) : 0.0,
          solver == 0 ? 1.0 / (double(n) * C) : 0.0};
    auto w_ll = liblinear_weights(file, solver, C, dir);
    ASSERT_EQ(w_ll.numel(), dim);
    const double p_ll = p.objective(w_ll);
    auto w1 = torch::zeros({dim}, torch::kDouble).requires_grad_();
    sgdx::optim::DASVRDA dasvrda({w1}, sgdx::optim::DASVRDAOptions(L).n(n).l1(p.l1).l2(p.l2).lr(
                                           4 * sgdx::optim::DASVRDAOptions(L).n(n).eta()));
    const double p_das = p.objective(solve(dasvrda, p, w1, b, passes));
    // liblinear's objective to 1e-6 relative (its own tolerance is the limit).
    EXPECT_NEAR(p_das, p_ll, 1e-6 * std::abs(p_ll)) << file << " -s " << solver;
    // The L2 problem is strongly convex: the minimiser itself must agree.
    if (solver == 0) {
      EXPECT_LT((w1.detach() - w_ll).norm().item<double>(), 1e-2 * (1 + w_ll.norm().item<double>())) << file;
    }
    if (with_svrg) {
      auto w2 = torch::zeros({dim}, torch::kDouble).requires_grad_();
      sgdx::optim::SVRG svrg({w2}, sgdx::optim::SVRGOptions(1.0 / L).n(n).b(b).l1(p.l1).l2(p.l2));
      const double p_svrg = p.objective(solve(svrg, p, w2, b, 3 * passes));
      EXPECT_NEAR(p_svrg, p_ll, 1e-6 * std::abs(p_ll)) << file << " -s " << solver << " (SVRG)";
    }
  }
}

bool have_liblinear() {
  return std::system("command -v liblinear-train >/dev/null 2>&1") == 0;
}

}  // namespace

TEST(Liblinear, HeartScaleOptimaAgree) {
  const std::string file = "/usr/share/doc/liblinear-tools/examples/heart_scale";
  if (!have_liblinear() || !std::filesystem::exists(file))
    GTEST_SKIP() << "Debian's liblinear-tools is not installed";
  check_agreement(file, 13, 400, /*with_svrg=*/true);
}

TEST(Liblinear, A9aOptimaAgreeWhenPresent) {
  const auto root = sgdx::testing::data_dir();
  if (!have_liblinear() || root.empty() || !std::filesystem::exists(root + "/libsvm/a9a"))
    GTEST_SKIP() << "liblinear-tools or SGDX_DATA_DIR/libsvm/a9a absent";
  check_agreement(root + "/libsvm/a9a", 123, 60, /*with_svrg=*/false);
}

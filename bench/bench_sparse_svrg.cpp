// Lazy sparse SVRG, Katyusha and DASVRDA on a generated sparse logistic problem (seeded,
// in memory): seconds per pass (the objective's evaluation not counted) and the objective
// after each pass. Time to a relative gap against liblinear: sgdx-erm --liblinear
// (docs/sparse_vr.md).
//   bench_sparse_svrg [rows=500000] [features=1000000] [per_row=50] [passes=5] [svrg|katyusha|dasvrda]
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "sgdx/cpu_isa.h"
#include "sgdx/data/libsvm.h"
#include "sgdx/optim/sparse_dasvrda.h"
#include "sgdx/optim/sparse_katyusha.h"
#include "sgdx/optim/sparse_svrg.h"

namespace {

sgdx::data::LibsvmCsr generate(int64_t n, int64_t d, int64_t per_row, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> col(0, d - 1);
  std::normal_distribution<double> normal;
  std::vector<double> truth(static_cast<size_t>(d));
  for (auto& t : truth) t = normal(rng);
  std::vector<int64_t> indptr = {0}, indices;
  std::vector<double> values, labels;
  indices.reserve(static_cast<size_t>(n * per_row));
  values.reserve(static_cast<size_t>(n * per_row));
  std::vector<int64_t> row;
  for (int64_t i = 0; i < n; ++i) {
    row.clear();
    for (int64_t k = 0; k < per_row; ++k) row.push_back(col(rng));
    std::sort(row.begin(), row.end());
    row.erase(std::unique(row.begin(), row.end()), row.end());
    const double norm = 1.0 / std::sqrt(double(row.size()));  // unit rows: L_i = 1/4
    double z = 0;
    for (const auto j : row) {
      indices.push_back(j);
      values.push_back(norm);
      z += norm * truth[static_cast<size_t>(j)];
    }
    indptr.push_back(static_cast<int64_t>(indices.size()));
    labels.push_back(z + 0.3 * normal(rng) > 0 ? 1.0 : -1.0);
  }
  sgdx::data::LibsvmCsr out;
  out.indptr = at::tensor(indptr, at::kLong);
  out.indices = at::tensor(indices, at::kLong);
  out.values = at::tensor(values, at::kDouble);
  out.labels = at::tensor(labels, at::kDouble);
  out.num_features = d;
  out.name = "generated";
  return out;
}

double objective(const sgdx::data::LibsvmCsr& c, const at::Tensor& w, double l1, double l2) {
  const auto* ip = c.indptr.data_ptr<int64_t>();
  const auto* ix = c.indices.data_ptr<int64_t>();
  const auto* v = c.values.data_ptr<double>();
  const auto* y = c.labels.data_ptr<double>();
  const auto* x = w.data_ptr<double>();
  double loss = 0;
  for (int64_t i = 0; i < c.rows(); ++i) {
    double z = 0;
    for (int64_t k = ip[i]; k < ip[i + 1]; ++k) z += v[k] * x[ix[k]];
    const double t = -y[i] * z;
    loss += t > 0 ? t + std::log1p(std::exp(-t)) : std::log1p(std::exp(t));
  }
  return loss / double(c.rows()) + l1 * w.abs().sum().item<double>() +
         0.5 * l2 * w.pow(2).sum().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 500000;
  const int64_t d = argc > 2 ? std::atoll(argv[2]) : 1000000;
  const int64_t per_row = argc > 3 ? std::atoll(argv[3]) : 50;
  const int passes = argc > 4 ? std::atoi(argv[4]) : 5;
  const double l1 = 1e-6, l2 = 1e-6;
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  const auto csr = generate(n, d, per_row, 1);
  std::printf("# generated %lld x %lld, nnz %lld in %.2f s; ISA %s\n", (long long)n, (long long)d,
              (long long)csr.nnz(), std::chrono::duration<double>(Clock::now() - t0).count(),
              std::string(sgdx::cpu_isa_name(sgdx::cpu_isa())).c_str());
  const std::string method = argc > 5 ? argv[5] : "svrg";
  if (method != "svrg" && method != "katyusha" && method != "dasvrda") {
    std::fprintf(stderr, "bench_sparse_svrg: the method must be svrg, katyusha or dasvrda, got '%s'\n",
                 method.c_str());
    return 2;
  }
  // SVRG: b = 1, m = 2n, lr 1 (unit rows, L_i = 1/4); Katyusha and DASVRDA: b = sqrt(n), m = n/b,
  // their theory steps.
  const int64_t b = method == "svrg" ? 1 : static_cast<int64_t>(std::ceil(std::sqrt(double(n))));
  std::function<void(const std::vector<int64_t>&)> step;
  std::function<at::Tensor()> weights;
  std::function<int64_t()> evaluations;
  const auto hold = [&](auto opt) {
    step = [opt](const std::vector<int64_t>& rows) { opt->step(rows); };
    weights = [opt] { return opt->weights(); };
    evaluations = [opt] { return opt->gradient_evaluations(); };
  };
  namespace so = sgdx::optim;
  if (method == "svrg") {
    hold(std::make_shared<so::SparseSVRG>(
        csr, so::SparseSVRGOptions{.lr = 1.0, .b = b, .m = 2 * n, .l1 = l1, .l2 = l2}));
  } else if (method == "katyusha") {
    hold(std::make_shared<so::SparseKatyusha>(csr, so::KatyushaOptions(0.25).n(n).b(b).l1(l1).l2(l2),
                                              so::GlmLoss::logistic));
  } else {
    hold(std::make_shared<so::SparseDASVRDA>(csr, so::DASVRDAOptions(0.25).n(n).b(b).l1(l1).l2(l2),
                                             so::GlmLoss::logistic));
  }
  std::mt19937_64 rng(3);
  std::printf("| %s pass | seconds (cumulative) | evaluations / n | objective |\n|---:|---:|---:|---:|\n",
              method.c_str());
  double seconds = 0;
  std::vector<int64_t> batch(static_cast<size_t>(b));
  for (int p = 1; p <= passes; ++p) {
    auto start = Clock::now();
    while (evaluations() < static_cast<int64_t>(p + 1) * n) {
      for (auto& i : batch) i = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
      step(batch);
    }
    auto w = weights();
    seconds += std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("| %d | %.2f | %.2f | %.10f |\n", p, seconds, double(evaluations()) / double(n),
                objective(csr, w, l1, l2));
  }
  return 0;
}

#include "problem.h"

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <cstdlib>

#include "pstar_cache.h"
#include "sgdx/data/libsvm.h"
#include "sgdx/optim/reference_optimum.h"

namespace sgdx_erm {
namespace {

// The LIBSVM file `--data` names (after the heart-scale and a9a shortcuts).
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

// Beyond what the reader checks (finite values, at least one feature): finite row norms and a
// nonzero row, so the smoothness and the default step sizes are finite.
void check_data(const at::Tensor& a, const std::string& path) {
  const auto sq = a.pow(2).sum(1);
  const auto overflow = (~torch::isfinite(sq)).nonzero();
  TORCH_CHECK(overflow.size(0) == 0, "LIBSVM file '", path, "': the squared norm of example ",
              overflow.size(0) > 0 ? overflow[0][0].item<int64_t>() + 1 : 0, " overflows float64");
  TORCH_CHECK(sq.max().item<double>() > 0, "LIBSVM file '", path, "': every example is zero, nothing to fit");
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A cached minimiser when its duality gap, recomputed on the data, still certifies it.
std::optional<PStar> cached_p_star(const PStarCache& cache, const Problem& p,
                                   const sgdx::optim::ReferenceOptimumOptions& o, Clock::time_point start) {
  auto w = cache.load(p.d());
  if (!w) return std::nullopt;
  const auto [obj, gap] = sgdx::optim::objective_and_gap(p.a, p.y, *w, o);
  if (gap <= 1e-12 * std::abs(obj)) {
    return PStar{*w, obj,
                 fmt::format("cached in {}, duality gap re-checked: {:.1e}, {:.2f} s", cache.file, gap,
                             seconds_since(start))};
  }
  PStarCache::warn(
      fmt::format("ignoring the P* cache file '{}': its minimiser's duality gap is {:.3g} "
                  "(P = {:.17g}); recomputing P*",
                  cache.file, gap, obj));
  return std::nullopt;
}

// The squared norm of every row of the CSR data, float64 [n].
at::Tensor csr_row_sq_norms(const sgdx::data::LibsvmCsr& c) {
  const auto rows = torch::repeat_interleave(c.indptr.diff());
  return torch::zeros({c.rows()}, torch::kDouble).index_add_(0, rows, c.values.pow(2));
}

// The sparse COO form of CSR data (what reference_optimum and objective_and_gap take).
at::Tensor coo_of(const sgdx::data::LibsvmCsr& c) {
  const auto rows = torch::repeat_interleave(c.indptr.diff());
  return torch::sparse_coo_tensor(torch::stack({rows, c.indices}), c.values, {c.rows(), c.num_features},
                                  torch::kDouble)
      ._coalesced_(true);
}

}  // namespace

double Problem::objective(const at::Tensor& w) const {
  torch::NoGradGuard g;
  const double reg = l1 * w.abs().sum().item<double>() + 0.5 * l2 * w.pow(2).sum().item<double>();
  if (!sparse()) return data_loss(w, torch::arange(n())).item<double>() + reg;
  // z = A w from the CSR arrays in O(nnz) vectorised ops (a COO mv dispatches per non-zero).
  const auto rows = torch::repeat_interleave(csr->indptr.diff());
  const auto z =
      torch::zeros({n()}, torch::kDouble).index_add_(0, rows, csr->values * w.index_select(0, csr->indices));
  const auto l = loss == "squares" ? 0.5 * (z - y).pow(2) : torch::nn::functional::softplus(-y * z);
  return l.mean().item<double>() + reg;
}

double Problem::mean_smoothness() const {
  const auto sq = sparse() ? csr_row_sq_norms(*csr) : a.pow(2).sum(1);
  return sq.mean().item<double>() * (loss == "squares" ? 1.0 : 0.25);
}

namespace {

// --storage auto: sparse when under 25 % of the entries are non-zero and every method
// asked for has a sparse form (all but sgd). The lazy loops win well beyond liblinear's
// kind of data: on a9a (11 %) Katyusha reached 1e-6 in 0.05 s held sparse and 0.26 s
// held dense (the closure-based optimizer), with the same iterates.
bool hold_sparse(const ErmOptions& o, const std::vector<std::string>& methods,
                 const sgdx::data::LibsvmCsr& c) {
  if (o.storage != "auto") return o.storage == "sparse";
  for (const auto& m : methods)
    if (m == "sgd") return false;
  return double(c.nnz()) < 0.25 * double(c.rows()) * double(c.num_features);
}

}  // namespace

Problem load_problem(const ErmOptions& o, const std::vector<std::string>& methods) {
  const std::string path = data_path(o.data);
  const int64_t features = o.data == "a9a" && o.features == 0 ? 123 : o.features;
  auto csr = sgdx::data::read_libsvm_csr(path, features);
  Problem p{{}, csr.labels, o.loss, o.l1, o.l2, std::nullopt};
  if (hold_sparse(o, methods, csr)) {
    const auto sq = csr_row_sq_norms(csr);
    const auto overflow = (~torch::isfinite(sq)).nonzero();
    TORCH_CHECK(overflow.size(0) == 0, "LIBSVM file '", path, "': the squared norm of example ",
                overflow.size(0) > 0 ? overflow[0][0].item<int64_t>() + 1 : 0, " overflows float64");
    TORCH_CHECK(sq.max().item<double>() > 0, "LIBSVM file '", path,
                "': every example is zero, nothing to fit");
    if (!o.no_normalize) {  // unit rows, as normalize_rows_ makes the dense ones
      const auto norms = sq.sqrt();
      const auto rows = torch::repeat_interleave(csr.indptr.diff());
      csr.values.div_(torch::where(norms > 0, norms, torch::ones_like(norms)).index_select(0, rows));
    }
    p.a = coo_of(csr);
    p.csr = std::move(csr);
  } else {
    p.a = csr.to_dense();
    check_data(p.a, path);
    if (!o.no_normalize) sgdx::data::normalize_rows_(p.a);
  }
  const double smoothness = p.mean_smoothness();
  TORCH_CHECK(std::isfinite(smoothness) && smoothness > 0, "LIBSVM file '", path,
              "': the mean squared row norm is ", smoothness, ", so no step size follows from it");
  return p;
}

int64_t batch_size(const ErmOptions& o, const Problem& p) {
  const int64_t b = o.batch > 0 ? o.batch : static_cast<int64_t>(std::ceil(std::sqrt(double(p.n()))));
  TORCH_CHECK(b <= p.n(), "--batch ", b, " exceeds n = ", p.n());
  return b;
}

PStar certified_p_star(const Problem& p, const std::string& cache_dir) {
  const auto o =
      sgdx::optim::ReferenceOptimumOptions()
          .loss(p.loss == "squares" ? sgdx::optim::GlmLoss::squares : sgdx::optim::GlmLoss::logistic)
          .l1(p.l1)
          .l2(p.l2);
  const auto start = Clock::now();
  const std::vector<at::Tensor> rows =
      p.sparse() ? std::vector<at::Tensor>{p.csr->indptr, p.csr->indices, p.csr->values}
                 : std::vector<at::Tensor>{p.a};
  PStarCache cache(cache_dir, rows, p.n(), p.d(), p.y, p.loss, p.l1, p.l2);
  if (auto cached = cached_p_star(cache, p, o, start)) return *cached;
  const auto r = sgdx::optim::reference_optimum(p.a, p.y, o);
  if (!r.certified())
    PStarCache::warn(
        fmt::format("P* is certified only to a duality gap of {:.3g} (relative {:.3g}); not cached", r.gap,
                    r.gap / std::abs(r.objective)));
  else
    cache.save(r.w);
  return {r.w, r.objective,
          fmt::format("{}: {} Newton / {} inner iterations, duality gap {:.1e}, {:.2f} s",
                      p.l1 > 0 ? "proximal Newton" : "Newton-CG", r.newton_iterations, r.inner_iterations,
                      r.gap, seconds_since(start))};
}

}  // namespace sgdx_erm

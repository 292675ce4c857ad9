#include "sgdx/ops/kmeans.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>

#include "sgdx/config.h"
#include "sgdx/detail/philox.h"

namespace sgdx::ops {
namespace {

void check_features(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.defined(), "kmeans: the features are undefined");
  TORCH_CHECK(x.dim() == 2, "kmeans: features must be 2-D [n, d], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "kmeans: features must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(0) >= 1 && x.size(1) >= 1, "kmeans: features must be non-empty, got shape ", x.sizes());
  TORCH_CHECK(k >= 1, "kmeans: the number of clusters must be >= 1, got ", k);
  TORCH_CHECK(k <= x.size(0), "kmeans: ", k, " clusters exceed the number of samples ", x.size(0));
  const auto finite_rows = at::isfinite(x).all(1);
  if (!finite_rows.all().item<bool>()) {
    const auto row = (~finite_rows).nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "kmeans: non-finite feature in row ", row);
  }
}

// max_iters, tol and the initial centroids (shared by both backends).
void check_options(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  TORCH_CHECK(options.max_iters >= 0, "kmeans: max_iters must be >= 0, got ", options.max_iters);
  TORCH_CHECK(options.tol >= 0 && std::isfinite(options.tol), "kmeans: tol must be finite and >= 0, got ",
              options.tol);
  if (options.init.defined()) {
    TORCH_CHECK(options.init.dim() == 2 && options.init.size(0) == k && options.init.size(1) == x.size(1),
                "kmeans: initial centroids must be [", k, ", ", x.size(1), "], got ", options.init.sizes());
    TORCH_CHECK(at::isfinite(options.init).all().item<bool>(), "kmeans: initial centroids are not finite");
  }
}

// Squared distance of every row of x to every centroid, up to the per-row
// constant ||x||^2 (enough for the argmin): ||c||^2 - 2 x.c.
at::Tensor partial_distances(const at::Tensor& x, const at::Tensor& c) {
  return c.pow(2).sum(1).unsqueeze(0) - 2 * x.mm(c.t());
}

}  // namespace

double kmeans_uniform(uint64_t seed, uint64_t stream, uint64_t draw) {
  return sgdx::detail::kmeans_uniform(seed, stream, draw);
}

at::Tensor nearest_centroid(const at::Tensor& x, const at::Tensor& centroids) {
  TORCH_CHECK(centroids.dim() == 2 && centroids.size(1) == x.size(1), "kmeans: centroids must be [k, ", x.size(1),
              "], got ", centroids.sizes());
  return partial_distances(x, centroids.to(x.scalar_type())).argmin(1);
}

at::Tensor kmeans_plusplus(const at::Tensor& x, int64_t k, uint64_t seed, uint64_t stream) {
  check_features(x, k);
  const int64_t n = x.size(0);
  std::vector<int64_t> chosen;
  chosen.reserve(k);
  auto pick_uniform = [&](uint64_t draw) {
    return std::min<int64_t>(n - 1, static_cast<int64_t>(kmeans_uniform(seed, stream, draw) * double(n)));
  };
  chosen.push_back(pick_uniform(0));
  at::Tensor best;  // float64 [n]: squared distance to the nearest chosen row
  for (int64_t j = 1; j < k; ++j) {
    const auto d = (x - x[chosen.back()]).pow(2).sum(1).to(at::kDouble).cpu();
    best = best.defined() ? at::minimum(best, d) : d;
    const auto cum = best.cumsum(0);
    const double total = cum[n - 1].item<double>();
    if (!(total > 0.0)) {
      chosen.push_back(pick_uniform(j));
      continue;
    }
    const double target = kmeans_uniform(seed, stream, j) * total;
    // First row whose cumulative weight exceeds the target (rows of weight 0 are never picked).
    int64_t idx = at::searchsorted(cum, at::scalar_tensor(target, cum.options()), /*out_int32=*/false,
                                   /*right=*/true)
                      .item<int64_t>();
    idx = std::min(idx, n - 1);
    while (idx > 0 && best[idx].item<double>() == 0.0) --idx;  // rounding at the very end of cum
    chosen.push_back(idx);
  }
  return at::tensor(chosen, at::TensorOptions().dtype(at::kLong)).to(x.device());
}

namespace detail {
void check_kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  TORCH_CHECK(x.defined() && x.is_cuda(), "kmeans_cuda: the features must be a CUDA tensor, got ",
              x.defined() ? x.device() : c10::Device(c10::kCPU), " (use KMeansBackend::aten on other devices)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "kmeans_cuda: the features must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.layout() == at::kStrided, "kmeans_cuda: the features must be a strided tensor, got ", x.layout());
  check_features(x, k);
  TORCH_CHECK(x.size(0) <= kKMeansCudaMaxRows, "kmeans_cuda: n = ", x.size(0), " rows exceed the kernel's limit of ",
              kKMeansCudaMaxRows, " (use KMeansBackend::aten)");
  TORCH_CHECK(k <= kKMeansCudaMaxClusters, "kmeans_cuda: k = ", k, " clusters exceed the kernel's limit of ",
              kKMeansCudaMaxClusters, " (use KMeansBackend::aten)");
  TORCH_CHECK(x.size(1) <= kKMeansCudaMaxFeatures, "kmeans_cuda: d = ", x.size(1),
              " features exceed the kernel's limit of ", kKMeansCudaMaxFeatures, " (use KMeansBackend::aten)");
  check_options(x, k, options);
  TORCH_CHECK(options.max_iters <= (int64_t{1} << 30), "kmeans_cuda: max_iters must be <= 2^30, got ",
              options.max_iters);
}
}  // namespace detail

#if !SGDX_WITH_CUDA
namespace detail {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_cuda_launch(const at::Tensor&, int64_t,
                                                                             const KMeansOptions&) {
  TORCH_CHECK(false, "kmeans_cuda: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
}  // namespace detail
#endif

KMeansResult kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  detail::check_kmeans_cuda(x, k, options);
  auto [c, a, counts, stats] = detail::kmeans_cuda_launch(x, k, options);
  const auto host = stats.cpu();  // one device-to-host read for both numbers
  KMeansResult out;
  out.centroids = c;
  out.assignment = a;
  out.counts = counts;
  out.iterations = static_cast<int64_t>(host[0].item<double>());
  out.inertia = host[1].item<double>();
  return out;
}

KMeansResult kmeans(const at::Tensor& x_in, int64_t k, const KMeansOptions& options) {
  if (options.backend == KMeansBackend::fused_cuda) return kmeans_cuda(x_in, k, options);
  check_features(x_in, k);
  check_options(x_in, k, options);
  const auto x = x_in.contiguous();
  at::Tensor c;
  if (options.init.defined()) {
    c = options.init.to(x.device(), x.scalar_type()).clone();
  } else {
    c = x.index_select(0, kmeans_plusplus(x, k, options.seed, options.stream));
  }
  const double tol_abs = options.tol * x.to(at::kDouble).var(0, /*unbiased=*/false).mean().item<double>();
  KMeansResult out;
  for (int64_t it = 0; it < options.max_iters; ++it) {
    const auto a = partial_distances(x, c).argmin(1);
    auto counts = at::bincount(a, /*weights=*/{}, k);
    auto sums = at::zeros_like(c).index_add_(0, a, x);
    auto next = sums / counts.clamp_min(1).unsqueeze(1).to(c.scalar_type());
    const auto empty = counts.eq(0).nonzero().flatten().cpu();
    if (empty.numel() > 0) {
      // Distance of every point to its own (previous) centroid; the farthest
      // points re-seed the empty clusters in ascending cluster order.
      auto far = (x - c.index_select(0, a)).pow(2).sum(1).to(at::kDouble);
      for (const auto e : c10::irange(empty.numel())) {
        const int64_t i = far.argmax().item<int64_t>();
        next[empty[e].item<int64_t>()].copy_(x[i]);
        far[i] = -1.0;
      }
    }
    const double shift = (next - c).pow(2).sum().item<double>();
    c = next;
    out.iterations = it + 1;
    if (shift <= tol_abs) break;
  }
  out.assignment = partial_distances(x, c).argmin(1);
  out.counts = at::bincount(out.assignment, {}, k);
  out.inertia = (x - c.index_select(0, out.assignment)).pow(2).sum().item<double>();
  out.centroids = c;
  return out;
}

}  // namespace sgdx::ops

#include "sgdx/ops/kmeans.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>
#include <limits>

#include "sgdx/config.h"
#include "sgdx/detail/philox.h"
#include "sgdx/ops/cuda_kernels.h"

namespace sgdx::ops {
namespace {

// Everything about x and k that needs no device work.
void check_shape(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.defined(), "kmeans: the features are undefined");
  TORCH_CHECK(x.dim() == 2, "kmeans: features must be 2-D [n, d], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "kmeans: features must be floating point, got ",
              x.scalar_type());
  TORCH_CHECK(k >= 1, "kmeans: the number of clusters must be >= 1, got ", k);
  TORCH_CHECK(x.size(0) == 0 || k <= x.size(0), "kmeans: ", k, " clusters exceed the number of samples ",
              x.size(0));
}

// One host sync (two when a row is bad): the ATen path's finiteness checks.
void check_finite(const at::Tensor& x) {
  const auto finite_rows = at::isfinite(x).all(1);
  if (!finite_rows.all().item<bool>()) {
    const auto row = (~finite_rows).nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "kmeans: non-finite feature in row ", row);
  }
}

// max_iters, tol and the shape of the initial centroids (shared by both
// backends; no device work: the fused path checks finiteness in the kernel).
void check_options(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  TORCH_CHECK(options.max_iters >= 0, "kmeans: max_iters must be >= 0, got ", options.max_iters);
  TORCH_CHECK(options.tol >= 0 && std::isfinite(options.tol), "kmeans: tol must be finite and >= 0, got ",
              options.tol);
  if (options.init.defined()) {
    TORCH_CHECK(options.init.dim() == 2 && options.init.size(0) == k && options.init.size(1) == x.size(1),
                "kmeans: initial centroids must be [", k, ", ", x.size(1), "], got ", options.init.sizes());
  }
}

bool is_empty(const at::Tensor& x) {
  return x.size(0) == 0 || x.size(1) == 0;
}

// t as a contiguous `dtype` tensor on `device`. A CPU tensor bound for a CUDA
// device goes through pinned memory and a non-blocking copy (a copy from pageable
// memory would block the host); the caching host allocator keeps the pinned
// block alive until the copy has run.
at::Tensor to_device_async(const at::Tensor& t, const at::Device& device, at::ScalarType dtype) {
  if (!(t.is_cpu() && device.is_cuda())) return t.detach().to(device, dtype).contiguous();
  auto host = at::empty(t.sizes(), at::TensorOptions().dtype(dtype).pinned_memory(true));
  host.copy_(t.detach());
  return host.to(host.options().device(device), /*non_blocking=*/true);
}

// The result for n = 0 or d = 0 (see kmeans.h), on x's device, without device syncs.
KMeansResult empty_result(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  const int64_t n = x.size(0), d = x.size(1);
  const auto lopt = x.options().dtype(at::kLong);
  KMeansResult out;
  out.assignment = at::zeros({n}, lopt);
  out.counts = at::zeros({k}, lopt);
  if (n > 0) out.counts.narrow(0, 0, 1).fill_(n);
  if (options.init.defined()) {
    out.centroids = to_device_async(options.init, x.device(), x.scalar_type()).clone();
  } else {
    out.centroids = at::full({k, d}, std::numeric_limits<double>::quiet_NaN(), x.options());
  }
  return out;
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
  TORCH_CHECK(centroids.dim() == 2 && centroids.size(1) == x.size(1), "kmeans: centroids must be [k, ",
              x.size(1), "], got ", centroids.sizes());
  return partial_distances(x, centroids.to(x.scalar_type())).argmin(1);
}

namespace {
// k-means++ on checked features (n >= k >= 1, finite).
at::Tensor plusplus_indices(const at::Tensor& x, int64_t k, uint64_t seed, uint64_t stream) {
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
}  // namespace

at::Tensor kmeans_plusplus(const at::Tensor& x, int64_t k, uint64_t seed, uint64_t stream) {
  check_shape(x, k);
  TORCH_CHECK(x.size(0) >= 1, "kmeans_plusplus: no rows to choose ", k, " centroids from");
  check_finite(x);
  return plusplus_indices(x, k, seed, stream);
}

namespace detail {
void check_kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  TORCH_CHECK(x.defined() && x.is_cuda(), "kmeans_cuda: the features must be a CUDA tensor, got ",
              x.defined() ? x.device() : c10::Device(c10::kCPU),
              " (use KMeansBackend::aten on other devices)");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "kmeans_cuda: the features must be float32, got ",
              x.scalar_type());
  TORCH_CHECK(x.layout() == at::kStrided, "kmeans_cuda: the features must be a strided tensor, got ",
              x.layout());
  check_shape(x, k);
  TORCH_CHECK(x.size(0) <= kKMeansCudaMaxRows, "kmeans_cuda: n = ", x.size(0),
              " rows exceed the kernel's limit of ", kKMeansCudaMaxRows, " (use KMeansBackend::aten)");
  TORCH_CHECK(k <= kKMeansCudaMaxClusters, "kmeans_cuda: k = ", k, " clusters exceed the kernel's limit of ",
              kKMeansCudaMaxClusters, " (use KMeansBackend::aten)");
  TORCH_CHECK(x.size(1) <= kKMeansCudaMaxFeatures, "kmeans_cuda: d = ", x.size(1),
              " features exceed the kernel's limit of ", kKMeansCudaMaxFeatures,
              " (use KMeansBackend::aten)");
  check_options(x, k, options);
  TORCH_CHECK(options.max_iters <= (int64_t{1} << 30), "kmeans_cuda: max_iters must be <= 2^30, got ",
              options.max_iters);
}

#if !SGDX_WITH_CUDA
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>> kmeans_cuda_try_launch(
    const at::Tensor&, int64_t, const KMeansOptions&) {
  TORCH_CHECK(false, "kmeans_cuda: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
int set_kmeans_cuda_grid_for_testing(int) {
  return 0;
}
#endif

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_cuda_launch(const at::Tensor& x, int64_t k,
                                                                              const KMeansOptions& options) {
  if (is_empty(x)) {
    auto stats = at::zeros({kStatCount}, x.options().dtype(at::kDouble));
    stats.narrow(0, kStatBadRow, 1).fill_(-1);
    auto r = empty_result(x, k, options);
    return {r.centroids, r.assignment, r.counts, stats};
  }
  KMeansOptions o = options;
  if (o.init.defined()) o.init = to_device_async(o.init, x.device(), at::kFloat);
  if (auto launched = kmeans_cuda_try_launch(x, k, o)) return *launched;
  o.backend = KMeansBackend::aten;
  auto r = kmeans(x, k, o);
  const auto host = at::tensor({static_cast<double>(r.iterations), r.inertia, -1.0, 0.0}, at::kDouble);
  return {r.centroids, r.assignment, r.counts, to_device_async(host, x.device(), at::kDouble)};
}
}  // namespace detail

KMeansResult kmeans_cuda(const at::Tensor& x, int64_t k, const KMeansOptions& options) {
  detail::check_kmeans_cuda(x, k, options);
  KMeansResult out;
  if (is_empty(x)) {
    out = empty_result(x, k, options);
    out.backend = KMeansBackend::fused_cuda;
    return out;
  }
  KMeansOptions o = options;
  if (o.init.defined()) o.init = to_device_async(o.init, x.device(), at::kFloat);
  auto launched = detail::kmeans_cuda_try_launch(x, k, o);
  if (!launched) {  // the device cannot run the cooperative launch (it has warned once)
    o.backend = KMeansBackend::aten;
    return kmeans(x, k, o);
  }
  auto [c, a, counts, stats] = *launched;
  out.centroids = c;
  out.assignment = a;
  out.counts = counts;
  out.backend = KMeansBackend::fused_cuda;
  if (options.defer_host_read) {
    out.stats = stats;
    out.iterations = -1;
    return out;
  }
  // The one host sync of the fused path: iterations, inertia and the finiteness flags in one read.
  const auto host = stats.cpu();
  detail::finish_kmeans_result(out, host.const_data_ptr<double>());
  return out;
}

void detail::finish_kmeans_result(KMeansResult& out, const double* h) {
  TORCH_CHECK(h[kStatBadRow] < 0, "kmeans: non-finite feature in row ", static_cast<int64_t>(h[kStatBadRow]));
  TORCH_CHECK(h[kStatBadInit] == 0, "kmeans: initial centroids are not finite");
  out.iterations = static_cast<int64_t>(h[kStatIterations]);
  out.inertia = h[kStatInertia];
}

KMeansBackend resolve_kmeans_backend(const at::Tensor& x, int64_t k, KMeansBackend backend) {
  if (backend != KMeansBackend::automatic) return backend;
  const bool fits = x.defined() && x.is_cuda() && x.scalar_type() == at::kFloat && x.dim() == 2 &&
                    x.size(0) <= kKMeansCudaMaxRows && k <= kKMeansCudaMaxClusters &&
                    x.size(1) <= kKMeansCudaMaxFeatures;
  return fits && fused_cuda_default(CudaKernel::kmeans) ? KMeansBackend::fused_cuda : KMeansBackend::aten;
}

KMeansResult kmeans(const at::Tensor& x_in, int64_t k, const KMeansOptions& options) {
  if (resolve_kmeans_backend(x_in, k, options.backend) == KMeansBackend::fused_cuda)
    return kmeans_cuda(x_in, k, options);
  check_shape(x_in, k);
  check_options(x_in, k, options);
  if (is_empty(x_in)) return empty_result(x_in, k, options);
  check_finite(x_in);
  if (options.init.defined()) {
    TORCH_CHECK(at::isfinite(options.init).all().item<bool>(), "kmeans: initial centroids are not finite");
  }
  const auto x = x_in.contiguous();
  at::Tensor c;
  if (options.init.defined()) {
    c = to_device_async(options.init, x.device(), x.scalar_type()).clone();
  } else {
    c = x.index_select(0, plusplus_indices(x, k, options.seed, options.stream));
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
  out.backend = KMeansBackend::aten;
  return out;
}

}  // namespace sgdx::ops

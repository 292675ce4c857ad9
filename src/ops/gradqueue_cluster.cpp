// The clustered GradQueue step's per-cluster statistics: validation, the ATen
// (float64) reference, and the stub of the CUDA kernel in builds without CUDA.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/irange.h>

#include "sgdx/config.h"
#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops {
namespace detail {
void check_cluster_stats(const std::vector<GradQueueClusterTensor>& tensors, const at::Tensor& inv_size,
                         bool cuda) {
  const char* who = cuda ? "gradqueue_cluster_stats_cuda" : "gradqueue_cluster_stats";
  TORCH_CHECK(inv_size.defined() && inv_size.dim() == 1 && inv_size.numel() >= 1 &&
                  inv_size.scalar_type() == at::kDouble,
              who, ": inv_size must be a non-empty 1-D float64 tensor [K], got ",
              inv_size.defined() ? inv_size.sizes() : c10::IntArrayRef{}, " ",
              inv_size.defined() ? inv_size.scalar_type() : at::ScalarType::Undefined);
  const int64_t K = inv_size.numel();
  if (tensors.empty()) return;
  const auto device = tensors[0].sums.defined() ? tensors[0].sums.device() : c10::Device(c10::kCPU);
  const auto dtype = tensors[0].sums.defined() ? tensors[0].sums.scalar_type() : at::ScalarType::Undefined;
  const auto stat_dtype = at::isFloatingType(dtype) ? gradqueue_stats_dtype(dtype) : dtype;
  TORCH_CHECK(!cuda || device.is_cuda(), who, ": tensors must be on a CUDA device, got ", device);
  TORCH_CHECK(!cuda || inv_size.device() == device, who, ": inv_size is on ", inv_size.device(),
              ", the tensors on ", device);
  for (const auto t : c10::irange(tensors.size())) {
    const auto& x = tensors[t];
    TORCH_CHECK(x.s1.defined() && x.s2.defined() && x.sums.defined(), who, ": tensor ", t,
                " needs sums, s1 and s2");
    const bool wd = x.weight_decay != 0.0;
    TORCH_CHECK(!wd || x.param.defined(), who, ": tensor ", t, " has weight_decay ", x.weight_decay,
                " but no param");
    for (const auto* y : {&x.sums, &x.s1, &x.s2, &x.param}) {
      if (!y->defined() || (y == &x.param && !wd)) continue;
      const auto want = (y == &x.s1 || y == &x.s2) ? stat_dtype : dtype;
      const bool ok =
          y->scalar_type() == want || (y == &x.s1 && y->scalar_type() == at::kDouble);  // exact: f64 mean
      TORCH_CHECK(y->device() == device && ok, who, ": tensor ", t, " has an operand on ", y->device(),
                  " with dtype ", y->scalar_type(), "; expected ", device, " with dtype ", want);
      TORCH_CHECK(at::isFloatingType(y->scalar_type()), who, ": tensor ", t, " has dtype ", y->scalar_type(),
                  " (floating point needed)");
      TORCH_CHECK(y->layout() == at::kStrided, who, ": tensor ", t, " has a ", y->layout(), " operand");
    }
    const int64_t n = x.s1.numel();
    TORCH_CHECK(x.s2.numel() == n && (!wd || x.param.numel() == n), who, ": tensor ", t, " has s1 of ", n,
                " elements, s2 of ", x.s2.numel(), wd ? " and param of " : "", wd ? x.param.numel() : 0);
    TORCH_CHECK(x.sums.dim() >= 1 && x.sums.size(0) == K && x.sums.numel() == K * n, who, ": tensor ", t,
                " has sums of shape ", x.sums.sizes(), ", expected [", K, ", <", n, " elements>]");
    TORCH_CHECK(std::isfinite(x.inv_n) && x.inv_n > 0, who, ": tensor ", t, " has inv_n ", x.inv_n,
                " (must be finite and > 0)");
    TORCH_CHECK(std::isfinite(x.weight_decay), who, ": tensor ", t, " has weight_decay ", x.weight_decay);
  }
}
}  // namespace detail

at::Tensor gradqueue_cluster_stats_aten(const std::vector<GradQueueClusterTensor>& tensors,
                                        const at::Tensor& inv_size) {
  detail::check_cluster_stats(tensors, inv_size, /*cuda=*/false);
  const int64_t K = inv_size.numel();
  c10::AutoGradMode no_grad(false);
  std::vector<at::Tensor> rows;
  for (const auto& x : tensors) {
    const auto dev = x.s1.device();
    auto mu = x.s1.to(at::kDouble).reshape({1, -1});
    auto g = x.sums.to(at::kDouble).reshape({K, -1}) * inv_size.to(dev).unsqueeze(1);
    if (x.weight_decay != 0.0) g = g + x.weight_decay * x.param.to(at::kDouble).reshape({1, -1});
    auto var = (x.s2.to(at::kDouble) * x.inv_n).clamp_min(0).sum();
    rows.push_back(at::cat({(g - mu).square().sum(1), var.reshape({1})}));
  }
  if (rows.empty()) return at::zeros({0, K + 1}, inv_size.options());
  return at::stack(rows);
}

#if !SGDX_WITH_CUDA
at::Tensor gradqueue_cluster_stats_cuda(const std::vector<GradQueueClusterTensor>& tensors,
                                        const at::Tensor& inv_size) {
  detail::check_cluster_stats(tensors, inv_size, /*cuda=*/true);
  TORCH_CHECK(false, "gradqueue_cluster_stats_cuda: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
#endif

}  // namespace sgdx::ops

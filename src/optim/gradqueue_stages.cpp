#include "sgdx/optim/detail/gradqueue_stages.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/autograd.h>

#include <algorithm>
#include <unordered_map>

#include "sgdx/ops/kmeans.h"
#include "sgdx/ops/per_sample.h"

namespace sgdx::optim::detail {

ClusterAssignment cluster_batch(const at::Tensor& losses, const at::Tensor& features,
                                const ClusterSettings& s) {
  const int64_t K = s.clusters;
  ops::KMeansOptions ko;
  ko.max_iters = s.kmeans_iters;
  ko.tol = s.kmeans_tol;
  ko.seed = s.seed;
  ko.stream = s.stream;
  if (s.fused_cuda && features.is_cuda() && features.scalar_type() == at::kFloat &&
      features.size(0) <= ops::kKMeansCudaMaxRows && K <= ops::kKMeansCudaMaxClusters &&
      features.size(1) <= ops::kKMeansCudaMaxFeatures) {
    ko.backend = ops::KMeansBackend::fused_cuda;
  } else {
    ko.backend = ops::KMeansBackend::aten;  // fused_cuda(false) means no fused kernel at all
  }
  ko.defer_host_read = true;  // folded into the read below
  auto km = ops::kmeans(features.detach(), K, ko);
  ClusterAssignment c;
  c.assignment = km.assignment.to(losses.device());
  c.counts = km.counts.to(losses.device(), at::kDouble);
  // One device read for the host's bookkeeping: the batch loss (it drives the window length,
  // as a closure's would), the cluster sizes and the fused k-means' own numbers.
  std::vector<at::Tensor> parts{losses.detach().mean().to(at::kDouble).reshape({1}), c.counts};
  if (km.stats.defined()) parts.push_back(km.stats.to(losses.device()));
  const auto host = at::cat(parts).cpu();
  const double* h = host.const_data_ptr<double>();
  if (km.stats.defined()) ops::detail::finish_kmeans_result(km, h + 1 + K);
  c.mean_loss = h[0];
  for (int64_t k = 0; k < K; ++k) c.sizes.push_back(static_cast<int64_t>(h[k + 1]));
  c.iterations = km.iterations;
  return c;
}

namespace {
std::vector<at::Tensor> captured_sums(const at::Tensor& losses, const std::vector<at::Tensor>& params,
                                      const ClusterAssignment& c, ops::PerSampleGradients& capture) {
  const auto mean_loss = losses.mean();
  const auto K = static_cast<int64_t>(c.sizes.size());
  capture.attach(mean_loss, losses.size(0));
  torch::autograd::grad({mean_loss}, params, {}, /*retain_graph=*/false, /*create_graph=*/false,
                        /*allow_unused=*/true);
  auto sums = capture.group_sums(c.assignment, K);
  auto cap_params = capture.parameters();
  std::unordered_map<const c10::TensorImpl*, size_t> where;
  for (const auto k : c10::irange(cap_params.size())) where[cap_params[k].unsafeGetTensorImpl()] = k;
  std::vector<at::Tensor> G(params.size());
  for (const auto j : c10::irange(params.size())) {
    auto it = where.find(params[j].unsafeGetTensorImpl());
    TORCH_CHECK(it != where.end() && sums[it->second].defined(),
                "GradQueueSGDM::clustered_step: optimised parameter ", j, " of shape ", params[j].sizes(),
                " is not captured by the PerSampleGradients "
                "(it must capture the model being optimised, without ignoring its parameters)");
    G[j] = sums[it->second];
  }
  return G;
}

// The reference: one autograd pass per non-empty cluster.
std::vector<at::Tensor> autograd_sums(const at::Tensor& losses, const std::vector<at::Tensor>& params,
                                      const ClusterAssignment& c) {
  const auto K = static_cast<int64_t>(c.sizes.size());
  std::vector<at::Tensor> G(params.size());
  for (const auto j : c10::irange(params.size())) {
    auto shape = params[j].sizes().vec();
    shape.insert(shape.begin(), K);
    G[j] = at::zeros(shape, params[j].options());
  }
  int64_t last = -1;
  for (int64_t k = 0; k < K; ++k)
    if (c.sizes[k] > 0) last = k;
  for (int64_t k = 0; k < K; ++k) {
    if (c.sizes[k] == 0) continue;
    auto idx = c.assignment.eq(k).nonzero().flatten();
    auto lk = losses.index_select(0, idx).sum();
    auto gk =
        torch::autograd::grad({lk}, params, {}, /*retain_graph=*/k != last, false, /*allow_unused=*/true);
    for (const auto j : c10::irange(params.size())) {
      if (gk[j].defined()) G[j][k].copy_(gk[j]);
    }
  }
  return G;
}
}  // namespace

std::vector<at::Tensor> cluster_gradient_sums(const at::Tensor& losses, const std::vector<at::Tensor>& params,
                                              const ClusterAssignment& clusters,
                                              ops::PerSampleGradients* capture) {
  return capture ? captured_sums(losses, params, clusters, *capture)
                 : autograd_sums(losses, params, clusters);
}

at::Tensor cluster_means(const at::Tensor& sums, const at::Tensor& inv_size, const at::Tensor& param,
                         double weight_decay) {
  const int64_t K = inv_size.numel();
  auto Gk = sums.reshape({K, -1}) * inv_size.to(param.device(), param.scalar_type()).unsqueeze(1);
  if (weight_decay != 0) Gk = Gk + weight_decay * param.detach().reshape({1, -1});
  return Gk;
}

ScarcityRule scarcity_rule(const GradQueueSGDMOptions& o) {
  return {o.eps(), o.kappa(), o.rho_min(), o.rho_max()};
}

namespace {
at::Tensor rho_of(const at::Tensor& dev, const at::Tensor& var, const ScarcityRule& r) {
  auto z = dev.sqrt() / (var.sqrt() + r.eps);
  return (r.kappa == 1.0 ? z : z.pow(r.kappa)).clamp(r.rho_min, r.rho_max);
}

struct Moments {
  at::Tensor dev;  // [K] ||G_k - mu||^2 (float64, on the device)
  at::Tensor var;  // sum sigma^2 (float64 scalar, on the device)
};

// The statistics of every tensor past its warm-up: the fused kernel in one launch for
// the CUDA tensors it takes (one device and dtype), gradqueue_cluster_stats_aten for the others.
std::vector<Moments> cluster_moments(const std::vector<ScarcityTensor>& tensors, const at::Tensor& inv_size,
                                     bool fused_cuda) {
  const int64_t K = inv_size.numel();
  std::vector<Moments> out(tensors.size());
  std::vector<ops::GradQueueClusterTensor> fused_stats, aten_stats;
  std::vector<size_t> fused_index, aten_index;
  for (const auto j : c10::irange(tensors.size())) {
    if (tensors[j].warm_up) continue;
    const auto& ct = tensors[j].stats;
    const auto& p = ct.param;
    const bool fits = fused_cuda && p.is_cuda() && ct.sums.device() == p.device() &&
                      ct.sums.scalar_type() == p.scalar_type() &&
                      (fused_stats.empty() || (fused_stats[0].sums.device() == p.device() &&
                                               fused_stats[0].sums.scalar_type() == p.scalar_type()));
    (fits ? fused_stats : aten_stats).push_back(ct);
    (fits ? fused_index : aten_index).push_back(j);
  }
  auto take = [&](const at::Tensor& stats, const std::vector<size_t>& index) {
    for (const auto r : c10::irange(index.size())) {
      const auto row = stats[static_cast<int64_t>(r)];
      out[index[r]] = {row.slice(0, 0, K), row[K]};
    }
  };
  if (!fused_stats.empty())
    take(ops::gradqueue_cluster_stats_cuda(fused_stats, inv_size.to(fused_stats[0].s1.device())),
         fused_index);
  const bool one_device = std::all_of(aten_stats.begin(), aten_stats.end(), [&](const auto& ct) {
    return ct.sums.device() == aten_stats[0].sums.device() &&
           ct.sums.scalar_type() == aten_stats[0].sums.scalar_type();
  });
  if (!aten_stats.empty() && one_device) {
    take(ops::gradqueue_cluster_stats_aten(aten_stats, inv_size.to(aten_stats[0].sums.device())), aten_index);
  } else {
    for (const auto r : c10::irange(aten_stats.size()))
      take(ops::gradqueue_cluster_stats_aten({aten_stats[r]}, inv_size.to(aten_stats[r].sums.device())),
           {aten_index[r]});
  }
  return out;
}
}  // namespace

std::vector<at::Tensor> cluster_scarcity(const std::vector<ScarcityTensor>& tensors,
                                         const at::Tensor& inv_size, GradQueueScope scope,
                                         const ScarcityRule& global_rule, bool fused_cuda) {
  const int64_t K = inv_size.numel();
  const auto moments = cluster_moments(tensors, inv_size, fused_cuda);
  std::vector<at::Tensor> rho(tensors.size());
  if (scope == GradQueueScope::global) {
    const bool warm = std::any_of(tensors.begin(), tensors.end(), [](const auto& t) { return t.warm_up; });
    at::Tensor global_rho = at::ones({K}, inv_size.options());
    if (!warm) {
      at::Tensor dev = at::zeros({K}, inv_size.options()), var = at::zeros({}, inv_size.options());
      for (const auto& m : moments) dev += m.dev.to(dev.device()), var += m.var.to(var.device());
      global_rho = rho_of(dev, var, global_rule);
    }
    std::fill(rho.begin(), rho.end(), global_rho);
    return rho;
  }
  for (const auto j : c10::irange(tensors.size())) {
    rho[j] = tensors[j].warm_up ? at::ones({K}, inv_size.options())
                                : rho_of(moments[j].dev, moments[j].var, tensors[j].rule);
  }
  return rho;
}

ClusterDirection combine_clusters(const at::Tensor& means, const at::Tensor& weights, const at::Tensor& rho,
                                  const at::Tensor& param) {
  const auto w = weights.to(param.device());
  const auto coef_star = (w * rho.to(param.device())).to(param.scalar_type());
  return {coef_star.unsqueeze(0).mm(means).view(param.sizes()),
          w.to(param.scalar_type()).unsqueeze(0).mm(means).view(param.sizes())};
}

}  // namespace sgdx::optim::detail

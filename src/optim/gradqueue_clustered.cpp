// GradQueueSGDM::clustered_step: the stages of sgdx/optim/detail/gradqueue_stages.h
// around the windows (gradqueue_window.h) and the momentum step.
#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/utils.h>

#include <algorithm>

#include "gradqueue_internal.h"
#include "gradqueue_window.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/detail/gradqueue_stages.h"
#include "sgdx/optim/gradqueue.h"

namespace sgdx::optim {
using detail::as_gq;

namespace {
void check_clustered_inputs(const torch::Tensor& losses, const torch::Tensor& features,
                            const ops::PerSampleGradients* capture) {
  TORCH_CHECK(
      losses.defined() && losses.dim() == 1 && losses.numel() >= 1,
      "GradQueueSGDM::clustered_step: losses must be a non-empty 1-D tensor of per-sample losses, got shape ",
      losses.defined() ? losses.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(losses.requires_grad() && losses.grad_fn(),
              "GradQueueSGDM::clustered_step: the per-sample losses have no autograd graph");
  TORCH_CHECK(features.defined() && features.dim() == 2,
              "GradQueueSGDM::clustered_step: features must be 2-D [B, d], got shape ",
              features.defined() ? features.sizes() : c10::IntArrayRef{});
  const int64_t B = losses.size(0);
  TORCH_CHECK(features.size(0) == B, "GradQueueSGDM::clustered_step: features have ", features.size(0),
              " rows but there are ", B, " per-sample losses");
  if (capture) {
    TORCH_CHECK(capture->options().reduction == ops::LossReduction::mean,
                "GradQueueSGDM::clustered_step: the capture must use LossReduction::mean");
  }
}

// The batch every rank clusters: its own rows, or (data-parallel) every rank's in rank order.
struct GlobalBatch {
  at::Tensor losses;    // [B_total] detached
  at::Tensor features;  // [B_total, d] detached
  int64_t offset = 0;   // this rank's first row
};

// One rank's rows of `x` [B_r, ...] gathered in rank order; ranks may hold different counts.
at::Tensor gather_rows(dist::Communicator& comm, const at::Tensor& x, const std::vector<int64_t>& rows) {
  const int64_t most = *std::max_element(rows.begin(), rows.end());
  auto padded = x.contiguous();
  if (x.size(0) < most) {
    auto shape = x.sizes().vec();
    shape[0] = most - x.size(0);
    padded = at::cat({padded, at::zeros(shape, x.options())});
  }
  const auto all = comm.all_gather(padded);  // [world, most, ...]
  std::vector<at::Tensor> parts;
  for (const auto r : c10::irange(rows.size()))
    parts.push_back(all[static_cast<int64_t>(r)].narrow(0, 0, rows[r]));
  return at::cat(parts);
}

GlobalBatch global_batch(dist::Communicator* comm, const at::Tensor& losses, const at::Tensor& features) {
  if (comm == nullptr) return {losses.detach(), features.detach(), 0};
  const auto counts = comm->all_gather(at::full({1}, losses.size(0), at::kLong)).flatten();
  std::vector<int64_t> rows(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  GlobalBatch g;
  for (int r = 0; r < comm->rank(); ++r) g.offset += rows[r];
  g.losses = gather_rows(*comm, losses.detach(), rows);
  g.features = gather_rows(*comm, features.detach(), rows);
  return g;
}

// This rank's rows of the global clustering: what its backward sums over.
detail::ClusterAssignment local_share(const detail::ClusterAssignment& global, int64_t offset, int64_t rows) {
  detail::ClusterAssignment c;
  const auto K = static_cast<int64_t>(global.sizes.size());
  c.assignment = global.assignment.narrow(0, offset, rows);
  c.counts = at::bincount(c.assignment, {}, K).to(at::kDouble);
  const auto host = c.counts.cpu();
  for (int64_t k = 0; k < K; ++k) c.sizes.push_back(static_cast<int64_t>(host[k].item<double>()));
  c.iterations = global.iterations;
  return c;
}
/// Every rank clusters the same gathered batch, but reductions on a GPU may round
/// differently from rank to rank: rank 0's assignment is the one used, and the
/// counts follow from it, so every rank mixes the same clusters.
void take_root_assignment(dist::Communicator* comm, detail::ClusterAssignment& c) {
  std::vector<at::Tensor> a = {c.assignment.to(at::kCPU, at::kLong).contiguous()};
  comm->broadcast(a, 0);
  const auto K = static_cast<int64_t>(c.sizes.size());
  c.assignment = a[0].to(c.assignment.device(), c.assignment.scalar_type());
  const auto counts = at::bincount(a[0], {}, K).to(at::kDouble);
  c.counts = counts.to(c.counts.device());
  for (int64_t k = 0; k < K; ++k) c.sizes[k] = static_cast<int64_t>(counts[k].item<double>());
}
}  // namespace

torch::Tensor GradQueueSGDM::clustered_step(const torch::Tensor& losses, const torch::Tensor& features,
                                            ops::PerSampleGradients* capture) {
  sync_optimizer_wide();
  const auto& dflt = defaults_options();
  const int64_t K = dflt.clusters();
  check_clustered_inputs(losses, features, capture);
  auto* comm = group();
  const auto batch = global_batch(comm, losses, features);
  const int64_t B = batch.losses.size(0);
  TORCH_CHECK(K <= B, "GradQueueSGDM::clustered_step: clusters = ", K, " exceeds the batch size ", B);
  // Parameters that take part (in group order).
  std::vector<at::Tensor> params;
  std::vector<size_t> group_of;
  for (const auto gi : c10::irange(param_groups_.size())) {
    for (auto& p : param_groups_[gi].params()) {
      if (!p.requires_grad()) continue;
      params.push_back(p);
      group_of.push_back(gi);
    }
  }
  TORCH_CHECK(!params.empty(), "GradQueueSGDM::clustered_step: no parameter requires grad");

  auto clusters = detail::cluster_batch(
      batch.losses, batch.features,
      {K, dflt.kmeans_iters(), dflt.kmeans_tol(), dflt.seed(), kmeans_calls_++, dflt.fused_cuda()});
  if (comm != nullptr) take_root_assignment(comm, clusters);
  observe_loss(clusters.mean_loss);
  take_pending_loss(/*reduce=*/false);  // the gathered batch's mean already
  // Each rank backprops its own rows; the per-cluster sums add up to the global batch's.
  auto sums = detail::cluster_gradient_sums(
      losses, params, comm ? local_share(clusters, batch.offset, losses.size(0)) : clusters, capture);
  detail::sum_over_ranks_(comm, sums);
  const auto inv = clusters.counts.clamp_min(1).reciprocal();  // empty clusters stay 0, weight 0
  const auto w = clusters.counts / static_cast<double>(B);

  torch::NoGradGuard no_grad;
  // The windows move with the loss trend; the means and the scarcity inputs of every tensor.
  std::vector<GradQueueSGDMParamState*> states(params.size());
  std::vector<at::Tensor> means(params.size());
  std::vector<detail::ScarcityTensor> scarcity(params.size());
  for (const auto j : c10::irange(params.size())) {
    const auto& p = params[j];
    const auto& o = as_gq(param_groups_[group_of[j]].options(), group_of[j]);
    auto& st = state_for(p, o);
    detail::window_resize(st, o, pending_trend_);
    st.step(st.step() + 1);
    states[j] = &st;
    means[j] = detail::cluster_means(sums[j], inv, p, o.weight_decay());
    auto& s = scarcity[j];
    s.rule = detail::scarcity_rule(o);
    s.warm_up = !detail::window_has_scarcity(st, o);
    if (s.warm_up) continue;
    s.stats = {sums[j], p.detach(), st.s1(), st.s2(), detail::window_inv_n(st, o), o.weight_decay()};
  }
  const auto rho =
      detail::cluster_scarcity(scarcity, inv, dflt.scope(), detail::scarcity_rule(dflt), dflt.fused_cuda());

  // Push the plain mean, momentum step on G* (torch::optim::SGD's rule).
  info_ = {};
  info_.cluster_sizes = clusters.sizes;
  info_.kmeans_iterations = clusters.iterations;
  at::Tensor rho_sum;
  double elements = 0.0;
  for (const auto j : c10::irange(params.size())) {
    auto& p = params[j];
    const auto& o = as_gq(param_groups_[group_of[j]].options(), group_of[j]);
    const auto dir = detail::combine_clusters(means[j], w, rho[j], p);
    // Plain batch-mean gradient (without weight decay) into .grad, as a backward would leave it.
    auto plain = o.weight_decay() != 0 ? dir.g_mean - o.weight_decay() * p.detach() : dir.g_mean;
    if (p.grad().defined()) {
      p.mutable_grad().copy_(plain);
    } else {
      p.mutable_grad() = plain.clone();
    }
    push_and_step(p, *states[j], o, dir.g_mean, dir.g_star);
    detail::add_rho(rho_sum,
                    (w.to(p.device()) * rho[j].to(p.device())).sum() * static_cast<double>(p.numel()));
    elements += static_cast<double>(p.numel());
    if (j == 0) info_.window = states[j]->window();
  }
  pending_trend_ = 0;
  rho_total_ = rho_sum;
  rho_elements_ = elements;
  return batch.losses.mean();
}

}  // namespace sgdx::optim

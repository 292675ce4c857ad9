#include "sgdx/optim/gradqueue.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>
#include <torch/autograd.h>
#include <torch/optim/serialize.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "sgdx/ops/gradqueue_step.h"
#include "sgdx/ops/kmeans.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/detail/param_groups.h"

namespace sgdx::optim {

GradQueueSGDMOptions::GradQueueSGDMOptions(double lr) : lr_(lr) {}

void GradQueueSGDMOptions::validate() const {
  const char* n = "GradQueueSGDM: ";
  TORCH_CHECK(lr() >= 0 && std::isfinite(lr()), n, "lr must be finite and >= 0, got ", lr());
  TORCH_CHECK(momentum() >= 0 && momentum() < 1, n, "momentum must be in [0, 1), got ", momentum());
  TORCH_CHECK(dampening() >= 0 && dampening() <= 1, n, "dampening must be in [0, 1], got ", dampening());
  TORCH_CHECK(!nesterov() || (momentum() > 0 && dampening() == 0), n,
              "nesterov needs momentum > 0 and dampening = 0, got momentum ", momentum(), ", dampening ",
              dampening());
  TORCH_CHECK(weight_decay() >= 0, n, "weight_decay must be >= 0, got ", weight_decay());
  TORCH_CHECK(q_min() >= 1, n, "q_min must be >= 1, got ", q_min());
  TORCH_CHECK(q_init() >= q_min() && q_init() <= q_max(), n, "q_init must be in [q_min, q_max] = [", q_min(),
              ", ", q_max(), "], got ", q_init());
  TORCH_CHECK(q_max() <= 65536, n, "q_max must be <= 65536, got ", q_max());
  TORCH_CHECK(rho_min() > 0 && rho_min() <= rho_max() && std::isfinite(rho_max()), n,
              "need 0 < rho_min <= rho_max < inf, got rho_min ", rho_min(), ", rho_max ", rho_max());
  TORCH_CHECK(kappa() > 0 && std::isfinite(kappa()), n, "kappa must be finite and > 0, got ", kappa());
  TORCH_CHECK(eps() > 0 && std::isfinite(eps()), n, "eps must be finite and > 0, got ", eps());
  TORCH_CHECK(granularity() == GradQueueGranularity::element || granularity() == GradQueueGranularity::tensor,
              n, "unknown granularity ", static_cast<int64_t>(granularity()));
  TORCH_CHECK(storage() == GradQueueStorage::exact || storage() == GradQueueStorage::ema, n,
              "unknown storage ", static_cast<int64_t>(storage()));
  TORCH_CHECK(scope() == GradQueueScope::per_tensor || scope() == GradQueueScope::global, n, "unknown scope ",
              static_cast<int64_t>(scope()));
  TORCH_CHECK(resync_every() >= 0, n, "resync_every must be >= 0, got ", resync_every());
  TORCH_CHECK(loss_beta() >= 0 && loss_beta() < 1, n, "loss_beta must be in [0, 1), got ", loss_beta());
  TORCH_CHECK(clusters() >= 1, n, "clusters must be >= 1, got ", clusters());
  TORCH_CHECK(kmeans_iters() >= 0, n, "kmeans_iters must be >= 0, got ", kmeans_iters());
  TORCH_CHECK(kmeans_tol() >= 0, n, "kmeans_tol must be >= 0, got ", kmeans_tol());
}

bool operator==(const GradQueueSGDMOptions& a, const GradQueueSGDMOptions& b) {
  return a.lr() == b.lr() && a.momentum() == b.momentum() && a.dampening() == b.dampening() &&
         a.nesterov() == b.nesterov() && a.weight_decay() == b.weight_decay() && a.q_min() == b.q_min() &&
         a.q_init() == b.q_init() && a.q_max() == b.q_max() && a.rho_min() == b.rho_min() &&
         a.rho_max() == b.rho_max() && a.kappa() == b.kappa() && a.eps() == b.eps() &&
         a.granularity() == b.granularity() && a.storage() == b.storage() &&
         a.resync_every() == b.resync_every() && a.loss_beta() == b.loss_beta() &&
         a.clusters() == b.clusters() && a.kmeans_iters() == b.kmeans_iters() &&
         a.kmeans_tol() == b.kmeans_tol() && a.scope() == b.scope() && a.seed() == b.seed() &&
         a.fused_cuda() == b.fused_cuda();
}

// clang-format 14 does not settle on one layout of this X-macro.
// clang-format off
#define SGDX_GQ_FIELDS(X)                                                                                 \
  X(lr, Double, double) X(momentum, Double, double) X(dampening, Double, double) X(nesterov, Bool, bool) \
  X(weight_decay, Double, double) X(q_min, Int, int64_t) X(q_init, Int, int64_t) X(q_max, Int, int64_t)  \
  X(rho_min, Double, double) X(rho_max, Double, double) X(kappa, Double, double) X(eps, Double, double)   \
  X(resync_every, Int, int64_t) X(loss_beta, Double, double) X(clusters, Int, int64_t)                   \
  X(kmeans_iters, Int, int64_t) X(kmeans_tol, Double, double)
// clang-format on

void GradQueueSGDMOptions::serialize(torch::serialize::OutputArchive& archive) const {
#define SGDX_W(name, Kind, T) archive.write(#name, c10::IValue(name()));
  SGDX_GQ_FIELDS(SGDX_W)
#undef SGDX_W
  archive.write("granularity", c10::IValue(static_cast<int64_t>(granularity())));
  archive.write("storage", c10::IValue(static_cast<int64_t>(storage())));
  archive.write("scope", c10::IValue(static_cast<int64_t>(scope())));
  archive.write("seed", c10::IValue(static_cast<int64_t>(seed())));
}

void GradQueueSGDMOptions::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue v;
#define SGDX_R(name, Kind, T) \
  archive.read(#name, v);     \
  name(static_cast<T>(v.to##Kind()));
  SGDX_GQ_FIELDS(SGDX_R)
#undef SGDX_R
  archive.read("granularity", v);
  granularity(static_cast<GradQueueGranularity>(v.toInt()));
  archive.read("storage", v);
  storage(static_cast<GradQueueStorage>(v.toInt()));
  archive.read("scope", v);
  scope(static_cast<GradQueueScope>(v.toInt()));
  archive.read("seed", v);
  seed(static_cast<uint64_t>(v.toInt()));
  // fused_cuda is not read: it chooses how this process computes, like a backend, and
  // stays as the optimizer was constructed.
  validate();
}

double GradQueueSGDMOptions::get_lr() const {
  return lr();
}
void GradQueueSGDMOptions::set_lr(const double lr) {
  this->lr(lr);
}

namespace {
void write_opt(torch::serialize::OutputArchive& a, const char* key, const at::Tensor& t) {
  a.write(std::string(key) + "_defined", c10::IValue(t.defined()));
  if (t.defined()) a.write(key, t, /*is_buffer=*/true);
}
at::Tensor read_opt(torch::serialize::InputArchive& a, const char* key) {
  c10::IValue v;
  a.read(std::string(key) + "_defined", v);
  if (!v.toBool()) return {};
  at::Tensor t;  // a fresh tensor: reading into a defined one set_()s it in place
  a.read(key, t, /*is_buffer=*/true);
  return t;
}
}  // namespace

void GradQueueSGDMParamState::serialize(torch::serialize::OutputArchive& archive) const {
  archive.write("step", c10::IValue(step()));
  write_opt(archive, "momentum_buffer", momentum_buffer());
  write_opt(archive, "queue", queue());
  write_opt(archive, "s1", s1());
  write_opt(archive, "s2", s2());
  archive.write("head", c10::IValue(head()));
  archive.write("count", c10::IValue(count()));
  archive.write("window", c10::IValue(window()));
  archive.write("pushes", c10::IValue(pushes()));
}

void GradQueueSGDMParamState::serialize(torch::serialize::InputArchive& archive) {
  c10::IValue v;
  archive.read("step", v);
  step(v.toInt());
  momentum_buffer(read_opt(archive, "momentum_buffer"));
  queue(read_opt(archive, "queue"));
  s1(read_opt(archive, "s1"));
  s2(read_opt(archive, "s2"));
  archive.read("head", v);
  head(v.toInt());
  archive.read("count", v);
  count(v.toInt());
  archive.read("window", v);
  window(v.toInt());
  archive.read("pushes", v);
  pushes(v.toInt());
}

bool operator==(const GradQueueSGDMParamState& a, const GradQueueSGDMParamState& b) {
  auto same = [](const at::Tensor& x, const at::Tensor& y) {
    return x.defined() == y.defined() && (!x.defined() || torch::equal(x, y));
  };
  return a.step() == b.step() && same(a.momentum_buffer(), b.momentum_buffer()) &&
         same(a.queue(), b.queue()) && same(a.s1(), b.s1()) && same(a.s2(), b.s2()) && a.head() == b.head() &&
         a.count() == b.count() && a.window() == b.window() && a.pushes() == b.pushes();
}

namespace {
const GradQueueSGDMOptions& as_gq(const torch::optim::OptimizerOptions& o, size_t group) {
  const auto* r = dynamic_cast<const GradQueueSGDMOptions*>(&o);
  TORCH_CHECK(r != nullptr, "GradQueueSGDM: parameter group ", group,
              " has options of another optimizer; pass sgdx::optim::GradQueueSGDMOptions");
  return *r;
}

bool exact_storage(const GradQueueSGDMOptions& o) {
  return o.storage() == GradQueueStorage::exact;
}

constexpr int64_t kStateFormat = 2;

// Queue rows of the window, oldest first: rows (head - count + j) mod q, indices formed
// on the queue's device (no host-to-device copy, no synchronisation).
at::Tensor window_rows(const GradQueueSGDMParamState& st) {
  const int64_t q = st.queue().size(0);
  const auto idx = (at::arange(st.count(), at::TensorOptions().dtype(at::kLong).device(st.queue().device())) +
                    (st.head() - st.count() + q))
                       .remainder(q);
  return st.queue().index_select(0, idx);
}

// Exact window statistics from the rows (two passes in float64): bounds the rounding drift.
void resync(GradQueueSGDMParamState& st) {
  if (st.count() == 0) {
    st.s1().zero_();
    st.s2().zero_();
    return;
  }
  const auto rows = window_rows(st).to(at::kDouble);
  const auto mean = rows.mean(0);
  st.s1().copy_(mean.view(st.s1().sizes()));
  st.s2().copy_((rows - mean).square().sum(0).view(st.s1().sizes()));
}
}  // namespace

GradQueueSGDM::GradQueueSGDM(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
                             GradQueueSGDMOptions defaults)
    : Optimizer(std::vector<torch::optim::OptimizerParamGroup>{},
                std::make_unique<GradQueueSGDMOptions>(defaults)) {
  defaults.validate();
  for (const auto& g : param_groups) add_param_group(g);
}

GradQueueSGDM::GradQueueSGDM(std::vector<torch::Tensor> params, GradQueueSGDMOptions defaults)
    : GradQueueSGDM({torch::optim::OptimizerParamGroup(std::move(params))}, std::move(defaults)) {}

void GradQueueSGDM::add_param_group(const torch::optim::OptimizerParamGroup& param_group) {
  detail::add_param_group_keeping_options<GradQueueSGDMOptions>(*this, param_group, "GradQueueSGDM");
}

const GradQueueSGDMOptions& GradQueueSGDM::defaults_options() const {
  return static_cast<const GradQueueSGDMOptions&>(defaults());
}

void GradQueueSGDM::observe_loss(double loss) {
  TORCH_CHECK(std::isfinite(loss), "GradQueueSGDM: the observed loss is not finite: ", loss);
  pending_loss_ = loss;  // enters the EMA when the step is taken (a skipped step leaves it out)
}

void GradQueueSGDM::take_pending_loss() {
  if (!pending_loss_) return;
  const double loss = *pending_loss_;
  pending_loss_.reset();
  if (!has_loss_ema_) {
    loss_ema_ = loss;
    has_loss_ema_ = true;
    return;
  }
  const double beta = defaults_options().loss_beta();
  const double next = beta * loss_ema_ + (1.0 - beta) * loss;
  pending_trend_ = next < loss_ema_ ? 1 : -1;
  loss_ema_ = next;
}

GradQueueSGDMParamState& GradQueueSGDM::state_for(const torch::Tensor& p, const GradQueueSGDMOptions& o) {
  auto& slot = state_[p.unsafeGetTensorImpl()];
  if (!slot) {
    auto st = std::make_unique<GradQueueSGDMParamState>();
    const auto opts = p.options()
                          .dtype(ops::gradqueue_stats_dtype(p.scalar_type()))
                          .memory_format(at::MemoryFormat::Contiguous);
    if (exact_storage(o)) st->queue(at::zeros({o.q_max(), p.numel()}, opts));
    st->s1(at::zeros(p.sizes(), opts.dtype(ops::gradqueue_mean_dtype(p.scalar_type(), exact_storage(o)))));
    st->s2(at::zeros(p.sizes(), opts));
    st->window(o.q_init());
    slot = std::move(st);
  }
  auto& st = static_cast<GradQueueSGDMParamState&>(*slot);
  TORCH_CHECK(st.s1().sizes() == p.sizes(), "GradQueueSGDM: state has shape ", st.s1().sizes(),
              " but the parameter has ", p.sizes());
  TORCH_CHECK(
      exact_storage(o) == st.queue().defined() && (!st.queue().defined() || st.queue().size(0) == o.q_max()),
      "GradQueueSGDM: the state's queue does not match the options (storage or q_max changed mid-run)");
  return st;
}

void GradQueueSGDM::apply_trend(GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o) const {
  st.window(std::clamp(st.window() + pending_trend_, o.q_min(), o.q_max()));
  if (exact_storage(o)) {
    // Shrinking drops the oldest entries from the statistics (sgdx/detail/gradqueue_math.h: window_drop).
    while (st.count() > st.window()) {
      const int64_t q = o.q_max();
      const auto old = st.queue()[((st.head() - st.count()) % q + q) % q].view(st.s1().sizes());
      const int64_t n = st.count() - 1;
      const auto mu = st.s1().clone();
      st.s1().add_((mu - old) / static_cast<double>(n));
      st.s2().sub_((old - mu) * (old - st.s1())).clamp_min_(0);
      st.count(n);
    }
  } else {
    st.count(std::min(st.count(), st.window()));
  }
}

void GradQueueSGDM::after_push(GradQueueSGDMParamState& st, const GradQueueSGDMOptions& o) const {
  st.pushes(st.pushes() + 1);
  st.count(std::min(st.count() + 1, st.window()));
  if (exact_storage(o)) {
    st.head((st.head() + 1) % o.q_max());
    if (o.resync_every() > 0 && st.pushes() % o.resync_every() == 0) resync(st);
  }
}

namespace {
// Sums of Delta-rho stay on their devices; every device keeps one running sum.
void add_rho(at::Tensor& total, const at::Tensor& part) {
  const auto x = part.to(at::kDouble);
  if (!total.defined()) {
    total = x.clone();
  } else if (total.device() == x.device()) {
    total.add_(x);
  } else {
    total = total.cpu() + x.cpu();
  }
}

ops::GradQueueStepConfig step_config(const GradQueueSGDMOptions& o) {
  ops::GradQueueStepConfig c;
  c.lr = o.lr();
  c.momentum = o.momentum();
  c.dampening = o.dampening();
  c.weight_decay = o.weight_decay();
  c.nesterov = o.nesterov();
  c.rho_min = o.rho_min();
  c.rho_max = o.rho_max();
  c.kappa = o.kappa();
  c.eps = o.eps();
  c.per_element = o.granularity() == GradQueueGranularity::element;
  return c;
}
}  // namespace

ops::GradQueueTensor GradQueueSGDM::step_operands(const torch::Tensor& p, GradQueueSGDMParamState& st,
                                                  const GradQueueSGDMOptions& o, const torch::Tensor& grad,
                                                  const torch::Tensor& direction) {
  ops::GradQueueTensor t;
  t.param = p;
  t.grad = grad.contiguous();
  if (direction.defined()) {
    t.direction = direction.contiguous();
  } else {
    t.scarcity = st.count() >= o.q_min();
  }
  t.count = st.count();
  t.first_step = !st.momentum_buffer().defined();
  if (o.momentum() != 0 && t.first_step) st.momentum_buffer(at::empty_like(t.param));
  t.momentum = st.momentum_buffer();
  t.s1 = st.s1();
  t.s2 = st.s2();
  if (exact_storage(o)) {
    const int64_t q = o.q_max();
    t.slot = st.queue()[st.head()];
    if (st.count() == st.window()) t.old = st.queue()[((st.head() - st.count()) % q + q) % q];
  } else {
    t.ema_rate = 1.0 / static_cast<double>(std::min(st.count() + 1, st.window()));
  }
  return t;
}

at::Tensor GradQueueSGDM::push_and_step(const torch::Tensor& p, GradQueueSGDMParamState& st,
                                        const GradQueueSGDMOptions& o, const torch::Tensor& grad,
                                        const torch::Tensor& direction) {
  auto c = step_config(o);
  if (direction.defined()) c.weight_decay = 0.0;  // the clustered step's gradients include it already
  const bool copy_back = !p.is_contiguous();
  auto t = step_operands(copy_back ? p.contiguous() : p, st, o, grad, direction);
  auto rho_sum = ops::gradqueue_step_(t, c);
  if (copy_back) p.copy_(t.param);
  after_push(st, o);
  return rho_sum;
}

torch::Tensor GradQueueSGDM::step(LossClosure closure) {
  return step_scaled({}, {}, std::move(closure));
}

torch::Tensor GradQueueSGDM::step_scaled(const at::Tensor& grad_scale, const at::Tensor& found_inf,
                                         LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss = {};
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  if (detail::amp_begin_step(*this, grad_scale, found_inf, closure != nullptr, "GradQueueSGDM")) {
    pending_loss_.reset();  // the skipped batch's loss does not enter the window's trend either
    return loss;
  }
  if (loss.defined() && loss.numel() == 1) observe_loss(loss.item<double>());
  take_pending_loss();
  info_ = {};
  at::Tensor rho_sum;  // device sums of Delta-rho, read only when last_step_info() is asked for
  double elements = 0.0;
  bool first_info = true;
  const bool fused = defaults_options().fused_cuda();
  for (const auto gi : c10::irange(param_groups_.size())) {
    auto& group = param_groups_[gi];
    const auto& o = as_gq(group.options(), gi);
    // Contiguous CUDA tensors, one multi-tensor launch per (device, dtype).
    struct Bucket {
      c10::Device device;
      at::ScalarType dtype;
      std::vector<ops::GradQueueTensor> tensors;
      std::vector<GradQueueSGDMParamState*> states;
    };
    std::vector<Bucket> buckets;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) {
        // No gradient this step: no push, but the window length follows the loss like the others'.
        auto it = state_.find(p.unsafeGetTensorImpl());
        if (it != state_.end()) apply_trend(static_cast<GradQueueSGDMParamState&>(*it->second), o);
        continue;
      }
      TORCH_CHECK(!p.grad().is_sparse(), "GradQueueSGDM: sparse gradients are not supported");
      TORCH_CHECK(p.grad().scalar_type() == p.scalar_type(), "GradQueueSGDM: gradient dtype ",
                  p.grad().scalar_type(), " differs from parameter dtype ", p.scalar_type());
      auto& st = state_for(p, o);
      apply_trend(st, o);
      st.step(st.step() + 1);
      if (first_info) info_.window = st.window(), first_info = false;
      elements += static_cast<double>(p.numel());
      if (fused && p.is_cuda() && p.is_contiguous() && p.grad().device() == p.device()) {
        auto it = std::find_if(buckets.begin(), buckets.end(), [&](const Bucket& b) {
          return b.device == p.device() && b.dtype == p.scalar_type();
        });
        if (it == buckets.end())
          it = buckets.insert(buckets.end(), Bucket{p.device(), p.scalar_type(), {}, {}});
        it->tensors.push_back(step_operands(p, st, o, p.grad(), at::Tensor()));
        it->states.push_back(&st);
      } else {
        add_rho(rho_sum, push_and_step(p, st, o, p.grad(), at::Tensor()));
      }
    }
    for (auto& b : buckets) {
      add_rho(rho_sum, ops::gradqueue_step_cuda_(b.tensors, step_config(o)).sum());
      for (auto* st : b.states) after_push(*st, o);  // resync reads the rows the kernel wrote (stream order)
    }
  }
  pending_trend_ = 0;
  rho_total_ = rho_sum;
  rho_elements_ = elements;
  return loss;
}

torch::Tensor GradQueueSGDM::clustered_step(const torch::Tensor& losses, const torch::Tensor& features,
                                            ops::PerSampleGradients* capture) {
  const auto& dflt = defaults_options();
  TORCH_CHECK(
      losses.defined() && losses.dim() == 1 && losses.numel() >= 1,
      "GradQueueSGDM::clustered_step: losses must be a non-empty 1-D tensor of per-sample losses, got shape ",
      losses.defined() ? losses.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(losses.requires_grad() && losses.grad_fn(),
              "GradQueueSGDM::clustered_step: the per-sample losses have no autograd graph");
  TORCH_CHECK(features.defined() && features.dim() == 2,
              "GradQueueSGDM::clustered_step: features must be 2-D [B, d], got shape ",
              features.defined() ? features.sizes() : c10::IntArrayRef{});
  const int64_t B = losses.size(0), K = dflt.clusters();
  TORCH_CHECK(features.size(0) == B, "GradQueueSGDM::clustered_step: features have ", features.size(0),
              " rows but there are ", B, " per-sample losses");
  TORCH_CHECK(K <= B, "GradQueueSGDM::clustered_step: clusters = ", K, " exceeds the batch size ", B);
  if (capture) {
    TORCH_CHECK(capture->options().reduction == ops::LossReduction::mean,
                "GradQueueSGDM::clustered_step: the capture must use LossReduction::mean");
  }
  // Parameters that take part (in group order).
  struct Item {
    at::Tensor p;
    size_t group;
  };
  std::vector<Item> items;
  std::vector<at::Tensor> params;
  for (const auto gi : c10::irange(param_groups_.size())) {
    for (auto& p : param_groups_[gi].params()) {
      if (!p.requires_grad()) continue;
      items.push_back({p, gi});
      params.push_back(p);
    }
  }
  TORCH_CHECK(!items.empty(), "GradQueueSGDM::clustered_step: no parameter requires grad");

  // 1. Clusters.
  ops::KMeansOptions ko;
  ko.max_iters = dflt.kmeans_iters();
  ko.tol = dflt.kmeans_tol();
  ko.seed = dflt.seed();
  ko.stream = kmeans_calls_++;
  const bool fused = dflt.fused_cuda();
  if (fused && features.is_cuda() && features.scalar_type() == at::kFloat &&
      features.size(0) <= ops::kKMeansCudaMaxRows && K <= ops::kKMeansCudaMaxClusters &&
      features.size(1) <= ops::kKMeansCudaMaxFeatures) {
    ko.backend = ops::KMeansBackend::fused_cuda;
  } else {
    ko.backend = ops::KMeansBackend::aten;  // fused_cuda(false) means no fused kernel at all
  }
  ko.defer_host_read = true;  // folded into the read below
  auto km = ops::kmeans(features.detach(), K, ko);
  const auto assign = km.assignment.to(losses.device());
  const auto counts = km.counts.to(losses.device(), at::kDouble);
  // One device read for the host's bookkeeping: the batch loss (it drives the window length,
  // as a closure's would), the cluster sizes and the fused k-means' own numbers.
  std::vector<at::Tensor> parts{losses.detach().mean().to(at::kDouble).reshape({1}), counts};
  if (km.stats.defined()) parts.push_back(km.stats.to(losses.device()));
  const auto host = at::cat(parts).cpu();
  const double* h = host.const_data_ptr<double>();
  if (km.stats.defined()) ops::detail::finish_kmeans_result(km, h + 1 + K);
  observe_loss(h[0]);
  take_pending_loss();
  std::vector<int64_t> sizes;
  for (int64_t k = 0; k < K; ++k) sizes.push_back(static_cast<int64_t>(h[k + 1]));

  // 2. Per-cluster mean gradients G_k, [K, *shape] per parameter.
  const auto mean_loss = losses.mean();
  std::vector<at::Tensor> G(items.size());
  if (capture) {
    capture->attach(mean_loss, B);
    auto grads =
        torch::autograd::grad({mean_loss}, params, {}, /*retain_graph=*/false, /*create_graph=*/false,
                              /*allow_unused=*/true);
    auto sums = capture->group_sums(assign, K);
    auto cap_params = capture->parameters();
    std::unordered_map<const c10::TensorImpl*, size_t> where;
    for (const auto k : c10::irange(cap_params.size())) where[cap_params[k].unsafeGetTensorImpl()] = k;
    for (const auto j : c10::irange(items.size())) {
      auto it = where.find(items[j].p.unsafeGetTensorImpl());
      TORCH_CHECK(it != where.end() && sums[it->second].defined(),
                  "GradQueueSGDM::clustered_step: optimised "
                  "parameter ",
                  j, " of shape ", items[j].p.sizes(),
                  " is not captured by the PerSampleGradients "
                  "(it must capture the model being optimised, without ignoring its parameters)");
      G[j] = sums[it->second];
    }
  } else {
    for (const auto j : c10::irange(items.size())) {
      auto shape = items[j].p.sizes().vec();
      shape.insert(shape.begin(), K);
      G[j] = at::zeros(shape, items[j].p.options());
    }
    int64_t last = -1;
    for (int64_t k = 0; k < K; ++k)
      if (sizes[k] > 0) last = k;
    for (int64_t k = 0; k < K; ++k) {
      if (sizes[k] == 0) continue;
      auto idx = assign.eq(k).nonzero().flatten();
      // The sum (not mean) of the cluster's losses, scaled below like the fast path.
      auto lk = losses.index_select(0, idx).sum();
      auto gk =
          torch::autograd::grad({lk}, params, {}, /*retain_graph=*/k != last, false, /*allow_unused=*/true);
      for (const auto j : c10::irange(items.size())) {
        if (gk[j].defined()) G[j][k].copy_(gk[j]);
      }
    }
  }
  // Sums -> means (empty clusters stay 0 and get weight 0), on the device.
  const auto inv = counts.clamp_min(1).reciprocal();
  const auto w = counts / static_cast<double>(B);

  torch::NoGradGuard no_grad;
  // 3. Statistics per tensor and the cluster weights.
  struct Work {
    GradQueueSGDMParamState* st;
    const GradQueueSGDMOptions* o;
    at::Tensor Gk;   // [K, numel] incl. weight decay
    at::Tensor dev;  // [K] ||G_k - mu||^2 (float64, on the device)
    at::Tensor var;  // sum sigma^2 (float64 scalar, on the device)
    bool stats = false;
  };
  std::vector<Work> work(items.size());
  // Every backend computes the statistics in float64: the fused kernel in one launch for the
  // tensors it takes, gradqueue_cluster_stats_aten for the others.
  std::vector<ops::GradQueueClusterTensor> fused_stats, aten_stats;
  std::vector<size_t> fused_index, aten_index;
  for (const auto j : c10::irange(items.size())) {
    const auto& p = items[j].p;
    const auto& o = as_gq(param_groups_[items[j].group].options(), items[j].group);
    auto& st = state_for(p, o);
    apply_trend(st, o);
    st.step(st.step() + 1);
    auto Gk = G[j].reshape({K, -1}) * inv.to(p.device(), p.scalar_type()).unsqueeze(1);
    if (o.weight_decay() != 0) Gk = Gk + o.weight_decay() * p.detach().reshape({1, -1});
    Work& wk = work[j];
    wk.st = &st;
    wk.o = &o;
    wk.Gk = Gk;
    wk.stats = st.count() >= o.q_min();
    if (!wk.stats) continue;
    ops::GradQueueClusterTensor ct;
    ct.sums = G[j];
    ct.param = p.detach();
    ct.s1 = st.s1();
    ct.s2 = st.s2();
    ct.inv_n = exact_storage(o) ? 1.0 / static_cast<double>(st.count()) : 1.0;
    ct.weight_decay = o.weight_decay();
    const bool fits = fused && p.is_cuda() && G[j].device() == p.device() &&
                      G[j].scalar_type() == p.scalar_type() &&
                      (fused_stats.empty() || (fused_stats[0].sums.device() == p.device() &&
                                               fused_stats[0].sums.scalar_type() == p.scalar_type()));
    (fits ? fused_stats : aten_stats).push_back(ct);
    (fits ? fused_index : aten_index).push_back(j);
  }
  auto take_stats = [&](const at::Tensor& stats, const std::vector<size_t>& index) {
    for (const auto r : c10::irange(index.size())) {
      work[index[r]].dev = stats[r].slice(0, 0, K);
      work[index[r]].var = stats[r][K];
    }
  };
  if (!fused_stats.empty())
    take_stats(ops::gradqueue_cluster_stats_cuda(fused_stats, inv.to(fused_stats[0].s1.device())),
               fused_index);
  const bool one_device = std::all_of(aten_stats.begin(), aten_stats.end(), [&](const auto& ct) {
    return ct.sums.device() == aten_stats[0].sums.device() &&
           ct.sums.scalar_type() == aten_stats[0].sums.scalar_type();
  });
  if (!aten_stats.empty() && one_device) {
    take_stats(ops::gradqueue_cluster_stats_aten(aten_stats, inv.to(aten_stats[0].sums.device())),
               aten_index);
  } else {
    for (const auto r : c10::irange(aten_stats.size()))
      take_stats(ops::gradqueue_cluster_stats_aten({aten_stats[r]}, inv.to(aten_stats[r].sums.device())),
                 {aten_index[r]});
  }
  auto rho_of = [&](const at::Tensor& dev, const at::Tensor& var, const GradQueueSGDMOptions& o) {
    auto z = dev.sqrt() / (var.sqrt() + o.eps());
    return (o.kappa() == 1.0 ? z : z.pow(o.kappa())).clamp(o.rho_min(), o.rho_max());
  };
  at::Tensor global_rho;
  if (dflt.scope() == GradQueueScope::global) {
    const bool all_stats = std::all_of(work.begin(), work.end(), [](const Work& wk) { return wk.stats; });
    if (all_stats) {
      at::Tensor dev = at::zeros({K}, counts.options()), var = at::zeros({}, counts.options());
      for (auto& wk : work) dev += wk.dev.to(dev.device()), var += wk.var.to(var.device());
      global_rho = rho_of(dev, var, dflt);
    } else {
      global_rho = at::ones({K}, counts.options());
    }
  }
  // 4. G*, push of the plain mean, momentum step.
  info_ = {};
  info_.cluster_sizes = sizes;
  info_.kmeans_iterations = km.iterations;
  at::Tensor rho_sum;
  double elements = 0.0;
  for (const auto j : c10::irange(items.size())) {
    auto& p = items[j].p;
    auto& wk = work[j];
    auto& st = *wk.st;
    const auto& o = *wk.o;
    const auto w_dev = w.to(p.device());  // |C_k| / B
    const at::Tensor rho = (global_rho.defined() ? global_rho
                            : wk.stats           ? rho_of(wk.dev, wk.var, o)
                                                 : at::ones({K}, w_dev.options()))
                               .to(p.device());
    auto coef_star = (w_dev * rho).to(p.scalar_type());
    auto g_star = coef_star.unsqueeze(0).mm(wk.Gk).view(p.sizes());
    auto g_mean = w_dev.to(p.scalar_type()).unsqueeze(0).mm(wk.Gk).view(p.sizes());
    // Plain batch-mean gradient (without weight decay) into .grad, as a backward would leave it.
    auto plain = o.weight_decay() != 0 ? g_mean - o.weight_decay() * p.detach() : g_mean;
    if (p.grad().defined()) {
      p.mutable_grad().copy_(plain);
    } else {
      p.mutable_grad() = plain.clone();
    }
    // Push the plain mean, momentum step on G* (torch::optim::SGD's rule).
    push_and_step(p, st, o, g_mean, g_star);
    add_rho(rho_sum, (w_dev * rho).sum() * static_cast<double>(p.numel()));
    elements += static_cast<double>(p.numel());
    if (j == 0) info_.window = st.window();
  }
  pending_trend_ = 0;
  rho_total_ = rho_sum;
  rho_elements_ = elements;
  return mean_loss.detach();
}

const GradQueueStepInfo& GradQueueSGDM::last_step_info() const {
  info_.mean_rho =
      rho_total_.defined() && rho_elements_ > 0 ? rho_total_.item<double>() / rho_elements_ : 1.0;
  return info_;
}

int64_t GradQueueSGDM::state_bytes() const {
  int64_t total = 0;
  for (const auto& [key, s] : state_) {
    const auto& st = static_cast<const GradQueueSGDMParamState&>(*s);
    for (const auto* t : {&st.momentum_buffer(), &st.queue(), &st.s1(), &st.s2()}) {
      if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
    }
  }
  return total;
}

void GradQueueSGDM::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::serialize<GradQueueSGDMParamState, GradQueueSGDMOptions>(archive, *this);
  archive.write("gradqueue_state_format", c10::IValue(kStateFormat));
  archive.write("gradqueue_loss_ema", c10::IValue(loss_ema_));
  archive.write("gradqueue_has_loss_ema", c10::IValue(has_loss_ema_));
  archive.write("gradqueue_pending_trend", c10::IValue(pending_trend_));
  archive.write("gradqueue_pending_loss", c10::IValue(pending_loss_ ? *pending_loss_ : std::nan("")));
  archive.write("gradqueue_kmeans_calls", c10::IValue(static_cast<int64_t>(kmeans_calls_)));
  // The optimizer-wide settings (loss_beta, clusters, k-means, scope, seed) live in the defaults.
  torch::serialize::OutputArchive d;
  defaults_options().serialize(d);
  archive.write("gradqueue_defaults", d);
}

void GradQueueSGDM::load(torch::serialize::InputArchive& archive) {
  torch::optim::serialize<GradQueueSGDMParamState, GradQueueSGDMOptions>(archive, *this);
  c10::IValue v;
  // 1 (no key): window sums; 2: mean and M2 / variance (sgdx/detail/gradqueue_math.h).
  const int64_t format = archive.try_read("gradqueue_state_format", v) ? v.toInt() : 1;
  TORCH_CHECK(format <= kStateFormat, "GradQueueSGDM::load: state format ", format,
              " is newer than this sgdx reads (", kStateFormat, ")");
  archive.read("gradqueue_loss_ema", v);
  loss_ema_ = v.toDouble();
  archive.read("gradqueue_has_loss_ema", v);
  has_loss_ema_ = v.toBool();
  archive.read("gradqueue_pending_trend", v);
  pending_trend_ = v.toInt();
  pending_loss_.reset();
  if (archive.try_read("gradqueue_pending_loss", v) && !std::isnan(v.toDouble()))
    pending_loss_ = v.toDouble();
  archive.read("gradqueue_kmeans_calls", v);
  kmeans_calls_ = static_cast<uint64_t>(v.toInt());
  torch::serialize::InputArchive d;
  archive.read("gradqueue_defaults", d);
  static_cast<GradQueueSGDMOptions&>(defaults()).serialize(d);
  for (const auto gi : c10::irange(param_groups_.size())) {
    const auto& o = as_gq(param_groups_[gi].options(), gi);
    for (auto& p : param_groups_[gi].params()) {
      auto it = state_.find(p.unsafeGetTensorImpl());
      if (it == state_.end()) continue;
      auto& st = static_cast<GradQueueSGDMParamState&>(*it->second);
      TORCH_CHECK(
          st.s1().defined() && st.s1().sizes() == p.sizes(), "GradQueueSGDM::load: saved state has shape ",
          st.s1().defined() ? st.s1().sizes() : c10::IntArrayRef{}, " but the parameter has ", p.sizes());
      TORCH_CHECK(exact_storage(o) == st.queue().defined() &&
                      (!st.queue().defined() || st.queue().size(0) == o.q_max()),
                  "GradQueueSGDM::load: the saved queue does not match the options' storage/q_max");
      const auto stats_dtype = ops::gradqueue_stats_dtype(p.scalar_type());
      const auto mean_dtype = ops::gradqueue_mean_dtype(p.scalar_type(), exact_storage(o));
      if (format < 2) {  // window sums S1, S2 in the parameter's dtype: to mean and M2 (or variance)
        TORCH_CHECK(st.s1().scalar_type() == p.scalar_type(), "GradQueueSGDM::load: saved state has dtype ",
                    st.s1().scalar_type(), " but the parameter has ", p.scalar_type());
        st.s1(st.s1().to(mean_dtype));
        st.s2(st.s2().to(stats_dtype));
        st.queue(st.queue().defined() ? st.queue().to(stats_dtype) : st.queue());
        if (exact_storage(o)) {
          resync(st);
        } else {
          st.s2((st.s2() - st.s1().square().to(stats_dtype)).clamp_min(0));
        }
      }
      TORCH_CHECK(st.s1().scalar_type() == mean_dtype && st.s2().scalar_type() == stats_dtype,
                  "GradQueueSGDM::load: saved window statistics have dtypes ", st.s1().scalar_type(), " and ",
                  st.s2().scalar_type(), " but a ", p.scalar_type(), " parameter needs ", mean_dtype, " and ",
                  stats_dtype);
      auto to_dev = [&](const at::Tensor& t) { return t.defined() ? t.to(p.device()).contiguous() : t; };
      st.s1(to_dev(st.s1()));
      st.s2(to_dev(st.s2()));
      st.queue(to_dev(st.queue()));
      st.momentum_buffer(to_dev(st.momentum_buffer()));
    }
  }
}

}  // namespace sgdx::optim

#include "trainer.h"

#include <ATen/autocast_mode.h>
#include <fmt/core.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "sgdx/amp/grad_scaler.h"
#include "sgdx/data/importance.h"
#include "sgdx/data/temperature.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/models/models.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"

namespace sgdx_train {
namespace {
thread_local double last_grad_sq_ = 0;  // squared gradient norm of the last step
}  // namespace

const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> names = {"sgd", "sgdm", "nesterov", "adam", "rsgd", "svrg", "gqsgdm"};
  return names;
}

double default_lr(const std::string& optimizer) {
  if (optimizer == "sgd") return 0.1;
  if (optimizer == "adam") return 1e-3;
  return 0.01;  // sgdm, nesterov, rsgd, gqsgdm: momentum-like methods
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        const std::vector<torch::Tensor>& params,
                                                        const TrainConfig& cfg) {
  const double lr = cfg.lr.value_or(default_lr(name));
  namespace o = torch::optim;
  if (name == "sgd") return std::make_unique<o::SGD>(params, o::SGDOptions(lr).weight_decay(cfg.weight_decay));
  if (name == "sgdm" || name == "nesterov") {
    TORCH_CHECK(cfg.momentum > 0 && cfg.momentum < 1, "momentum must be in (0, 1), got ", cfg.momentum);
    return std::make_unique<o::SGD>(
        params, o::SGDOptions(lr).momentum(cfg.momentum).nesterov(name == "nesterov").weight_decay(cfg.weight_decay));
  }
  if (name == "adam") return std::make_unique<o::Adam>(params, o::AdamOptions(lr).weight_decay(cfg.weight_decay));
  if (name == "rsgd") {
    TORCH_CHECK(cfg.rsgd_granularity == "element" || cfg.rsgd_granularity == "tensor",
                "rsgd granularity must be element or tensor, got '", cfg.rsgd_granularity, "'");
    TORCH_CHECK(cfg.rsgd_memory == "accumulated" || cfg.rsgd_memory == "previous",
                "rsgd memory must be accumulated or previous, got '", cfg.rsgd_memory, "'");
    auto opts = sgdx::optim::RSGDOptions(lr)
                    .gamma(cfg.rsgd_gamma)
                    .gamma0(cfg.rsgd_gamma0)
                    .max_prob(cfg.rsgd_max_prob)
                    .granularity(cfg.rsgd_granularity == "tensor" ? sgdx::optim::RSGDGranularity::tensor
                                                                  : sgdx::optim::RSGDGranularity::element)
                    .memory(cfg.rsgd_memory == "previous" ? sgdx::optim::RSGDMemory::previous
                                                          : sgdx::optim::RSGDMemory::accumulated)
                    .weight_decay(cfg.weight_decay);
    return std::make_unique<sgdx::optim::RSGD>(params, opts);
  }
  if (name == "svrg") {
    // n and b are set by the trainer (train_one); these are placeholders for validation.
    return std::make_unique<sgdx::optim::SVRG>(params, sgdx::optim::SVRGOptions(lr).n(1).b(1).l2(cfg.weight_decay));
  }
  if (name == "gqsgdm") {
    namespace so = sgdx::optim;
    TORCH_CHECK(cfg.momentum >= 0 && cfg.momentum < 1, "momentum must be in [0, 1), got ", cfg.momentum);
    TORCH_CHECK(cfg.gq_granularity == "element" || cfg.gq_granularity == "tensor",
                "gq granularity must be element or tensor, got '", cfg.gq_granularity, "'");
    TORCH_CHECK(cfg.gq_scope == "per-tensor" || cfg.gq_scope == "global", "gq scope must be per-tensor or global, got '",
                cfg.gq_scope, "'");
    TORCH_CHECK(cfg.gq_storage == "exact" || cfg.gq_storage == "ema", "gq storage must be exact or ema, got '",
                cfg.gq_storage, "'");
    TORCH_CHECK(cfg.gq_path == "fast" || cfg.gq_path == "reference", "gq path must be fast or reference, got '",
                cfg.gq_path, "'");
    TORCH_CHECK(cfg.clusters >= 1, "--clusters must be >= 1, got ", cfg.clusters);
    auto opts = so::GradQueueSGDMOptions(lr)
                    .momentum(cfg.momentum)
                    .weight_decay(cfg.weight_decay)
                    .granularity(cfg.gq_granularity == "tensor" ? so::GradQueueGranularity::tensor
                                                                : so::GradQueueGranularity::element)
                    .scope(cfg.gq_scope == "global" ? so::GradQueueScope::global : so::GradQueueScope::per_tensor)
                    .storage(cfg.gq_storage == "ema" ? so::GradQueueStorage::ema : so::GradQueueStorage::exact)
                    .clusters(cfg.clusters);
    return std::make_unique<so::GradQueueSGDM>(params, opts);
  }
  TORCH_CHECK(false, "unknown optimizer '", name, "' (choose one of sgd, sgdm, nesterov, adam, rsgd, svrg, gqsgdm)");
}

RunSpec parse_run_spec(const std::string& item_in, const TrainConfig& cfg) {
  RunSpec spec{item_in, item_in, cfg.balance, cfg.tau, cfg.sampling};
  std::string item = item_in;
  const auto plus = item.find('+');
  if (plus != std::string::npos) {
    spec.sampling = item.substr(plus + 1);
    item = item.substr(0, plus);
    spec.optimizer = item;
  }
  const auto at = item.find('@');
  if (at != std::string::npos) {
    spec.optimizer = item.substr(0, at);
    spec.balance = item.substr(at + 1);
    const auto colon = spec.balance.find(':');
    if (colon != std::string::npos) {
      const auto tau_text = spec.balance.substr(colon + 1);
      spec.balance = spec.balance.substr(0, colon);
      try {
        spec.tau = std::stod(tau_text);
      } catch (const std::exception&) {
        TORCH_CHECK(false, "'", item, "': tau must be a number, got '", tau_text, "'");
      }
    }
  }
  if (spec.optimizer.rfind("gqsgdm-k", 0) == 0) {
    const auto k_text = spec.optimizer.substr(8);
    int64_t k = 0;
    try {
      size_t used = 0;
      k = std::stoll(k_text, &used);
      if (used != k_text.size()) k = 0;
    } catch (const std::exception&) {
      k = 0;
    }
    TORCH_CHECK(k >= 1, "'", item_in, "': the cluster count of gqsgdm-kN must be an integer >= 1, got '", k_text, "'");
    spec.optimizer = "gqsgdm";
    spec.clusters = k;
  } else {
    spec.clusters = spec.optimizer == "gqsgdm" ? cfg.clusters : 1;
  }
  TORCH_CHECK(spec.clusters >= 1, "--clusters must be >= 1, got ", spec.clusters);
  TORCH_CHECK(spec.clusters <= cfg.batch_size, "'", item_in, "': clusters = ", spec.clusters,
              " exceeds the batch size ", cfg.batch_size);
  if (spec.optimizer == "gqsgdm" && spec.clusters > 1 && spec.label.find("gqsgdm-k") == std::string::npos)
    spec.label.replace(spec.label.find("gqsgdm"), 6, "gqsgdm-k" + std::to_string(spec.clusters));
  const auto& known = optimizer_names();
  TORCH_CHECK(std::find(known.begin(), known.end(), spec.optimizer) != known.end(), "unknown optimizer '",
              spec.optimizer, "' (choose one of sgd, sgdm, nesterov, adam, rsgd, svrg, gqsgdm, gqsgdm-kN)");
  TORCH_CHECK(spec.clusters == 1 || (spec.sampling == "uniform" && spec.balance == "none"), "'", item_in,
              "': the clustered GradQueue step cannot be combined with importance sampling or class balancing");
  TORCH_CHECK(spec.balance == "none" || spec.balance == "ts" || spec.balance == "scalarize" || spec.balance == "cooldown",
              "unknown balance '", spec.balance, "' in '", item, "' (choose none, ts, scalarize or cooldown)");
  TORCH_CHECK(spec.tau > 0 && std::isfinite(spec.tau), "tau must be > 0, got ", spec.tau, " in '", item, "'");
  TORCH_CHECK(spec.sampling == "uniform" || spec.sampling == "loss" || spec.sampling == "upper-bound" ||
                  spec.sampling == "exact",
              "unknown sampling '", spec.sampling, "' in '", item_in, "' (choose uniform, loss, upper-bound or exact)");
  TORCH_CHECK(spec.sampling == "uniform" || spec.balance == "none", "'", item_in,
              "': importance sampling and class balancing cannot be combined");
  TORCH_CHECK(!(spec.sampling == "exact" && cfg.presample > 0), "'", item_in,
              "': presampling scores with a forward pass only; use loss or upper-bound with --presample");
  // --amp covers the forward / backward / step loop; these paths run their own backward.
  TORCH_CHECK(cfg.amp == "none" || cfg.amp == "bf16" || cfg.amp == "fp16", "unknown --amp '", cfg.amp,
              "' (choose none, bf16 or fp16)");
  if (cfg.amp != "none") {
    TORCH_CHECK(spec.optimizer != "svrg", "'", item_in, "': --amp ", cfg.amp,
                " does not apply to svrg: its closures run the backward inside the step, and its variance "
                "reduction subtracts nearby gradients that low precision swamps; use --amp none");
    TORCH_CHECK(spec.clusters == 1, "'", item_in, "': --amp ", cfg.amp,
                " does not apply to the clustered GradQueue step: it runs its own backward on per-sample "
                "losses, out of a loss scaler's reach; use --amp none or one cluster");
    TORCH_CHECK(spec.sampling != "exact", "'", item_in, "': --amp ", cfg.amp,
                " does not apply to --sampling exact: its per-sample gradient norms would be taken of "
                "low-precision (fp16: loss-scaled, overflowing) layer gradients; use loss or upper-bound");
  }
  return spec;
}

namespace {

// A one-line progress display on stderr, redrawn at most 5 times a second on
// a terminal; elsewhere (logs, CI) a line per epoch.
class Progress {
 public:
  Progress(bool enabled, std::string label) : enabled_(enabled), tty_(::isatty(2) != 0), label_(std::move(label)) {}
  void update(int epoch, int epochs, int64_t batch, int64_t batches, double loss, double seconds) {
    if (!enabled_ || !tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (batch != batches && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const int width = 24;
    const int filled = static_cast<int>(width * batch / std::max<int64_t>(batches, 1));
    std::fprintf(stderr, "\r%s epoch %d/%d [%s%s] %3d%% loss %.4f %.1fs ", label_.c_str(), epoch, epochs,
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 static_cast<int>(100 * batch / std::max<int64_t>(batches, 1)), loss, seconds);
    std::fflush(stderr);
  }
  void epoch_done(const EpochMetrics& m, int epochs) {
    if (!enabled_) return;
    std::fprintf(stderr, "%s%s epoch %d/%d train loss %.4f test loss %.4f test acc %.2f%% %.1fs\n",
                 tty_ ? "\r\033[K" : "", label_.c_str(), m.epoch, epochs, m.train_loss, m.test_loss,
                 100 * m.test_accuracy, m.seconds);
  }

 private:
  bool enabled_, tty_;
  std::string label_;
  std::chrono::steady_clock::time_point last_{};
};

// Test loss and accuracy overall and per class; head/tail accuracy by the
// classes' training counts.
void evaluate(sgdx::models::Classifier& model, const sgdx::data::TensorDataset& test, int64_t classes,
              const std::vector<int64_t>& train_counts, const torch::Device& device, EpochMetrics& m) {
  torch::NoGradGuard no_grad;
  model.eval();
  const int64_t n = test.inputs().size(0);
  auto loss_sum = torch::zeros({classes}, torch::kDouble), correct = torch::zeros({classes}, torch::kDouble);
  auto count = torch::zeros({classes}, torch::kDouble);
  for (int64_t i = 0; i < n; i += 1000) {
    const int64_t len = std::min<int64_t>(1000, n - i);
    auto x = test.inputs().narrow(0, i, len).to(device);
    auto y = test.targets().narrow(0, i, len).to(device);
    auto logits = model.forward(x);
    auto losses = torch::nn::functional::cross_entropy(
        logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    auto yc = y.cpu();
    loss_sum.index_add_(0, yc, losses.to(torch::kDouble).cpu());
    correct.index_add_(0, yc, logits.argmax(1).eq(y).to(torch::kDouble).cpu());
    count.index_add_(0, yc, torch::ones({len}, torch::kDouble));
  }
  model.train();
  m.test_loss = loss_sum.sum().item<double>() / double(n);
  m.test_accuracy = correct.sum().item<double>() / double(n);
  auto acc = correct / count.clamp_min(1), cls_loss = loss_sum / count.clamp_min(1);
  m.class_accuracy.assign(acc.data_ptr<double>(), acc.data_ptr<double>() + classes);
  m.class_loss.assign(cls_loss.data_ptr<double>(), cls_loss.data_ptr<double>() + classes);
  auto sorted = train_counts;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.empty() ? 0 : double(sorted[sorted.size() / 2]);
  double head_c = 0, head_n = 0, tail_c = 0, tail_n = 0;
  for (int64_t c = 0; c < classes && c < static_cast<int64_t>(train_counts.size()); ++c) {
    const bool head = double(train_counts[c]) >= median;
    (head ? head_c : tail_c) += correct[c].item<double>();
    (head ? head_n : tail_n) += count[c].item<double>();
  }
  m.head_accuracy = head_n > 0 ? head_c / head_n : std::nan("");
  m.tail_accuracy = tail_n > 0 ? tail_c / tail_n : std::nan("");
}

}  // namespace

namespace {

// What Python's `with torch.autocast(device_type, dtype):` does on entry and exit; a
// no-op without a dtype.
class AutocastRegion {
 public:
  AutocastRegion(c10::DeviceType type, std::optional<at::ScalarType> dtype)
      : type_(type), active_(dtype.has_value()) {
    if (!active_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(type_);
    prev_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, *dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastRegion() {
    if (!active_) return;
    // The cached low-precision copies of the weights are stale after the step.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, prev_enabled_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
  }
  AutocastRegion(const AutocastRegion&) = delete;
  AutocastRegion& operator=(const AutocastRegion&) = delete;

 private:
  c10::DeviceType type_;
  bool active_, prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

std::optional<at::ScalarType> amp_dtype(const std::string& amp) {
  if (amp == "bf16") return at::kBFloat16;
  if (amp == "fp16") return at::kHalf;
  return std::nullopt;
}

at::Tensor per_example_ce(const at::Tensor& logits, const at::Tensor& y) {
  return torch::nn::functional::cross_entropy(logits, y,
                                              torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
}

// Forward-only scores of a batch for a sampling mode ("loss" or "upper-bound").
at::Tensor forward_scores(const std::string& sampling, const at::Tensor& logits, const at::Tensor& y) {
  if (sampling == "upper-bound") return sgdx::data::upper_bound_scores(logits, y);
  return per_example_ce(logits.detach(), y);
}

// Exact per-example gradient norms of `model` on (x, y) (one backward with capture).
at::Tensor exact_norms(sgdx::models::Classifier& model, const at::Tensor& x, const at::Tensor& y) {
  sgdx::ops::PerSampleGradients cap(model);
  auto loss = torch::nn::functional::cross_entropy(model.forward(x), y);
  cap.attach(loss, x.size(0));
  loss.backward();
  model.zero_grad();
  return cap.norms();
}

}  // namespace

RunResult train_one(const sgdx::data::DatasetSplits& data, const RunSpec& spec, int64_t seed,
                    const TrainConfig& cfg, const torch::Device& device) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  auto model = sgdx::models::make_model(cfg.model, data.input_shape, data.num_classes);
  model->to(device);
  auto optimizer = make_optimizer(spec.optimizer, model->parameters(), cfg);
  if (auto* r = dynamic_cast<sgdx::optim::RSGD*>(optimizer.get())) {
    for (auto& g : r->param_groups()) static_cast<sgdx::optim::RSGDOptions&>(g.options()).seed(static_cast<uint64_t>(seed));
  }
  auto* gq = dynamic_cast<sgdx::optim::GradQueueSGDM*>(optimizer.get());
  if (gq != nullptr) {
    static_cast<sgdx::optim::GradQueueSGDMOptions&>(gq->defaults())
        .clusters(spec.clusters)
        .seed(static_cast<uint64_t>(seed))
        .fused_cuda(cfg.fused_cuda);
  }
  const bool clustered = gq != nullptr && spec.clusters > 1;
  std::optional<sgdx::ops::PerSampleGradients> gq_capture;
  sgdx::ops::PerSampleOptions capture_options;
  if (cfg.fused_cuda && device.is_cuda()) capture_options.backend = sgdx::ops::PerSampleBackend::fused_cuda;
  if (clustered && cfg.gq_path == "fast") gq_capture.emplace(*model, capture_options);

  auto train = data.train;
  if (cfg.train_subset > 0 && cfg.train_subset < train.inputs().size(0)) {
    train = sgdx::data::TensorDataset(train.inputs().narrow(0, 0, cfg.train_subset),
                                      train.targets().narrow(0, 0, cfg.train_subset));
  }
  const int64_t n = train.inputs().size(0);
  auto* svrg = dynamic_cast<sgdx::optim::SVRG*>(optimizer.get());
  if (svrg != nullptr) {
    // SVRG on a deep net: the full gradient is a loop over the training set; the
    // minibatch closure is evaluated at the snapshot and at the current point.
    auto& o = static_cast<sgdx::optim::SVRGOptions&>(svrg->param_groups()[0].options());
    o.n(n).b(std::min<int64_t>(cfg.batch_size, n));
    svrg->set_full_gradient_closure([&model, &train, &device, n] {
      at::Tensor total = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble));
      for (int64_t i = 0; i < n; i += 2000) {
        const int64_t len = std::min<int64_t>(2000, n - i);
        auto x = train.inputs().narrow(0, i, len).to(device);
        auto y = train.targets().narrow(0, i, len).to(device);
        auto l = torch::nn::functional::cross_entropy(
                     model->forward(x), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
                 double(n);
        l.backward();
        total += l.detach().to(torch::kDouble).cpu();
      }
      return total;
    });
  }
  const int64_t batches = (n + cfg.batch_size - 1) / cfg.batch_size;
  const int64_t total_steps = batches * cfg.epochs;
  const double base_lr = cfg.lr.value_or(default_lr(spec.optimizer));
  auto counts_t = torch::bincount(train.targets(), {}, data.num_classes);
  const std::vector<int64_t> train_counts(counts_t.data_ptr<int64_t>(), counts_t.data_ptr<int64_t>() + data.num_classes);
  // Scalarization: per-class loss weights w_k(tau) on uniformly drawn examples.
  at::Tensor class_weights;
  if (spec.balance == "scalarize")
    class_weights = sgdx::data::scalarization_weights(train_counts, spec.tau).to(torch::kFloat).to(device);
  // Importance sampling: the quality metric is evaluated on a fixed subset.
  const bool importance = spec.sampling != "uniform";
  const int64_t quality_m = std::min<int64_t>(512, n);
  auto quality_x = train.inputs().narrow(0, 0, quality_m).to(device);
  auto quality_y = train.targets().narrow(0, 0, quality_m).to(device);

  RunResult result{spec.label, seed, {}};
  Progress progress(cfg.progress, fmt::format("[{} seed {}]", spec.label, seed));
  double seconds = 0, tau = 0;
  int64_t step = 0, importance_steps = 0;

  // Mixed precision on the training device (CUDA, or the CPU, whose autocast takes both
  // dtypes: slow there, but it runs this path without a GPU). fp16 needs loss scaling:
  // its range loses small gradients. bf16 has float32's exponent range, so a scaler
  // would protect nothing and only add an inf check per step (and, for LibTorch's
  // optimizers, a host read): none, the scaler is disabled (it passes through).
  const auto amp = amp_dtype(cfg.amp);
  sgdx::amp::GradScaler scaler(sgdx::amp::GradScalerOptions().enabled(cfg.amp == "fp16"));
  int64_t amp_skipped = 0;

  // Optimizer step on (x, y) with optional per-example weights; returns the loss
  // and fills `scores` (when asked) with the batch's fresh scores.
  auto train_step = [&](const at::Tensor& x, const at::Tensor& y, const at::Tensor& weights,
                        at::Tensor* scores) -> double {
    if (cfg.schedule == "cosine") {
      const double lr = 0.5 * base_lr * (1 + std::cos(M_PI * double(step) / double(total_steps)));
      for (auto& g : optimizer->param_groups()) g.options().set_lr(lr);
    }
    optimizer->zero_grad();
    std::optional<sgdx::ops::PerSampleGradients> cap;
    if (scores != nullptr && spec.sampling == "exact") cap.emplace(*model, capture_options);
    at::Tensor logits, features, loss;
    {
      // The forward and the loss under autocast (PyTorch's recipe); backward and step outside.
      AutocastRegion autocast(device.type(), amp);
      if (clustered) {
        std::tie(logits, features) = model->forward_features(x);
      } else {
        logits = model->forward(x);
        if (weights.defined()) {
          loss = sgdx::data::weighted_mean_loss(per_example_ce(logits, y), weights);
        } else if (class_weights.defined()) {
          loss = (class_weights.index_select(0, y) * per_example_ce(logits, y)).mean();  // mean of w*l, not / sum(w)
        } else {
          loss = torch::nn::functional::cross_entropy(logits, y);
        }
      }
    }
    if (amp) logits = logits.to(torch::kFloat);  // the sampling scores below are float32
    auto check_finite = [&](double l) {
      TORCH_CHECK(std::isfinite(l), "training diverged: loss is ", l, " at step ", step + 1, " (", spec.label, ", lr ",
                  base_lr, "); lower --lr");
    };
    if (clustered) {
      // k-means on the last Linear's inputs, scarcity-weighted cluster gradients, momentum step.
      // A last batch smaller than K is split into one cluster per example.
      auto& gq_opts = static_cast<sgdx::optim::GradQueueSGDMOptions&>(gq->defaults());
      gq_opts.clusters(std::min<int64_t>(spec.clusters, x.size(0)));
      auto losses = per_example_ce(logits, y);
      check_finite(losses.detach().mean().item<double>());
      loss = gq->clustered_step(losses, features.detach(), gq_capture ? &*gq_capture : nullptr);
      gq_opts.clusters(spec.clusters);
    }
    if (cap) cap->attach(loss, x.size(0));
    if (clustered) {
      // clustered_step ran the backward and the step.
    } else if (svrg != nullptr) {
      // The same minibatch at the snapshot and at the current point.
      loss = svrg->step([&] {
        auto l = torch::nn::functional::cross_entropy(model->forward(x), y);
        l.backward();
        return l;
      });
    } else {
      scaler.scale(loss).backward();
      // The gradient norm below is the true gradient's (inf/nan when the step is skipped).
      scaler.unscale_(*optimizer);
    }
    if (scores != nullptr) {
      if (cap) {
        // The capture saw grad(w_i l_i); the score is ||grad l_i||.
        *scores = cap->norms() / (weights.defined() ? weights.to(device).to(torch::kDouble) : torch::ones({x.size(0)}, torch::TensorOptions().dtype(torch::kDouble).device(device)));
      } else {
        *scores = forward_scores(spec.sampling, logits, y);
      }
    }
    std::vector<at::Tensor> grads;
    for (auto& p : model->parameters())
      if (p.grad().defined()) grads.push_back(p.grad());
    // One device-to-host read per step for both numbers (each read is a GPU sync).
    auto gsq = grads.empty() ? torch::zeros({}, loss.options()) : at::stack(at::_foreach_norm(grads)).pow(2).sum();
    const auto host = at::stack({gsq.detach().to(torch::kDouble), loss.detach().to(torch::kDouble).reshape({})}).cpu();
    last_grad_sq_ = host[0].item<double>();
    const double l = host[1].item<double>();
    check_finite(l);  // before the step: a diverged loss never reaches the optimizer
    if (gq != nullptr && !clustered) gq->observe_loss(l);  // drives the queue length (not when skipped)
    if (svrg == nullptr && !clustered) {
      scaler.step(*optimizer);  // skipped when the fp16 gradients overflowed
      scaler.update();
      if (scaler.is_enabled() && !std::isfinite(last_grad_sq_)) ++amp_skipped;
    }
    ++step;
    return l;
  };

  // The epoch loop; `on_batch(batch)` trains on one loader batch and returns
  // {loss, examples}.
  auto run = [&](auto& loader, auto on_batch, const std::function<at::Tensor()>& quality_probs) {
    for (int epoch = 1; epoch <= cfg.epochs; ++epoch) {
      double loss_sum = 0, gn_sum = 0, gn_sq = 0;
      int64_t seen = 0, batch_index = 0, gn_count = 0;
      auto start = std::chrono::steady_clock::now();
      for (auto& batch : loader) {
        const auto [l, count] = on_batch(batch);
        if (std::isfinite(last_grad_sq_)) {  // not the steps a loss scaler skipped
          gn_sum += std::sqrt(last_grad_sq_);
          gn_sq += last_grad_sq_;
          ++gn_count;
        }
        loss_sum += l * double(count);
        seen += count;
        ++batch_index;
        const double now = seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        progress.update(epoch, cfg.epochs, batch_index, batches, loss_sum / double(std::max<int64_t>(seen, 1)), now);
      }
      if (device.is_cuda()) torch::cuda::synchronize();
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EpochMetrics m;
      m.epoch = epoch;
      m.steps = step;
      m.train_loss = loss_sum / double(std::max<int64_t>(seen, 1));
      m.seconds = seconds;
      const double k = double(std::max<int64_t>(gn_count, 1));
      m.grad_norm_mean = gn_sum / k;
      m.grad_norm_var = std::max(gn_sq / k - m.grad_norm_mean * m.grad_norm_mean, 0.0);
      m.tau = tau;
      m.importance_step_fraction = double(importance_steps) / double(std::max<int64_t>(step, 1));
      if (importance) {
        auto norms = exact_norms(*model, quality_x, quality_y);
        m.quality = sgdx::data::sampling_quality(norms, quality_probs());
      }
      evaluate(*model, data.test, data.num_classes, train_counts, device, m);
      result.epochs.push_back(m);
      progress.epoch_done(m, cfg.epochs);
    }
  };
  const auto options = torch::data::DataLoaderOptions(static_cast<size_t>(cfg.batch_size)).workers(0);
  auto plain_batch = [&](auto& batch) -> std::pair<double, int64_t> {
    return {train_step(batch.data.to(device), batch.target.to(device), {}, nullptr), batch.data.size(0)};
  };
  auto no_quality = []() { return at::Tensor(); };
  if (importance && cfg.presample > 0) {
    // K&F presampling: B = R * b uniform draws per step; importance steps only when tau pays for them.
    sgdx::data::Presampler presampler(cfg.batch_size, cfg.presample, cfg.mix, 0.9, static_cast<uint64_t>(seed));
    sgdx::data::ImportanceSamplerOptions so;
    so.mix = 1.0;  // uniform
    so.seed = static_cast<uint64_t>(seed);
    so.batches_per_epoch = batches;
    sgdx::data::ImportanceSampler uniform(n, so);
    auto loader = torch::data::make_data_loader(
        train, uniform, torch::data::DataLoaderOptions(static_cast<size_t>(presampler.presample_size())).workers(0));
    auto on_batch = [&](auto& batch) -> std::pair<double, int64_t> {
      uniform.take();
      auto x = batch.data.to(device);
      auto y = batch.target.to(device);
      at::Tensor scores;
      double l;
      if (presampler.importance_step()) {
        {
          torch::NoGradGuard no_grad;
          scores = forward_scores(spec.sampling, model->forward(x), y);
        }
        auto [pos, w] = presampler.select(scores);
        pos = pos.to(device);
        l = train_step(x.index_select(0, pos), y.index_select(0, pos), w.to(device), nullptr);
        ++importance_steps;
      } else {
        l = train_step(x.narrow(0, 0, cfg.batch_size), y.narrow(0, 0, cfg.batch_size), {}, &scores);
      }
      presampler.update_tau(scores);
      tau = presampler.tau();
      return {l, cfg.batch_size};
    };
    run(*loader, on_batch, [&]() -> at::Tensor {
      torch::NoGradGuard no_grad;
      auto s = forward_scores(spec.sampling, model->forward(quality_x), quality_y).to(torch::kDouble).cpu();
      const double total = s.sum().item<double>();
      if (!(total > 0)) return torch::full({quality_m}, 1.0 / double(quality_m), torch::kDouble);
      return (1 - cfg.mix) * s / total + cfg.mix / double(quality_m);
    });
  } else if (importance) {
    sgdx::data::ImportanceSamplerOptions so;
    so.mix = cfg.mix;
    so.seed = static_cast<uint64_t>(seed);
    so.batches_per_epoch = batches;
    sgdx::data::ImportanceSampler sampler(n, so);
    auto loader = torch::data::make_data_loader(train, sampler, options);
    auto on_batch = [&](auto& batch) -> std::pair<double, int64_t> {
      auto ib = sampler.take();
      at::Tensor scores;
      const double l = train_step(batch.data.to(device), batch.target.to(device), ib.weights.to(device), &scores);
      auto idx = torch::tensor(ib.indices, torch::kLong);
      sampler.update(idx, scores, cfg.score_beta);
      tau = 0.9 * tau + 0.1 * sgdx::data::effective_batch_increase(scores);
      ++importance_steps;
      return {l, batch.data.size(0)};
    };
    run(*loader, on_batch, [&]() { return sampler.probabilities(torch::arange(quality_m)); });
  } else if (spec.balance == "none") {
    auto loader = torch::data::make_data_loader(train, torch::data::samplers::RandomSampler(static_cast<size_t>(n)), options);
    run(*loader, plain_batch, no_quality);
  } else {
    auto schedule = spec.balance == "ts"         ? sgdx::data::TemperatureSchedule::constant(spec.tau)
                    : spec.balance == "cooldown" ? sgdx::data::TemperatureSchedule::cooldown(total_steps, spec.tau, 1.0)
                                                 : sgdx::data::TemperatureSchedule::constant(1.0);  // scalarize: pooled uniform
    sgdx::data::TemperatureSampler sampler(train.targets(), schedule, static_cast<uint64_t>(seed), batches,
                                           data.num_classes);
    auto loader = torch::data::make_data_loader(train, sampler, options);
    run(*loader, plain_batch, no_quality);
  }
  if (scaler.is_enabled()) {
    fmt::print("[{} seed {}] fp16: {} of {} steps skipped (inf/nan gradients), final loss scale {}\n",
               spec.label, seed, amp_skipped, step, scaler.get_scale());
  }
  return result;
}

}  // namespace sgdx_train

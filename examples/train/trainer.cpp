// One training run: a fresh model, its optimizer and sampler, the epoch loop, and
// the checkpoints that let it stop at any step and continue bit-identically.
#include <fmt/core.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>

#include "resume.h"
#include "sgdx/amp/grad_scaler.h"
#include "sgdx/checkpoint.h"
#include "sgdx/data/importance.h"
#include "sgdx/data/temperature.h"
#include "sgdx/ops/per_sample.h"
#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"
#include "train_parts.h"
#include "trainer.h"

namespace sgdx_train {
namespace {

using Archive = torch::serialize::OutputArchive;
using InArchive = torch::serialize::InputArchive;

thread_local double last_grad_sq_ = 0;  // squared gradient norm of the last step

// Counters of a run that its metrics and schedules read.
struct RunCounters {
  int64_t step = 0, importance_steps = 0, amp_skipped = 0;
  double tau = 0;      // importance sampling: running tau of the scores
  double seconds = 0;  // training time of the finished epochs (wall clock)
};

// The epoch in progress: its number and partial sums. `started`: the sampler was
// reset for it (a resumed run continues inside it without a reset).
struct EpochSums {
  int epoch = 1;
  bool started = false;
  double loss_sum = 0, gn_sum = 0, gn_sq = 0, elapsed = 0;
  int64_t seen = 0, batch_index = 0, gn_count = 0;
};

void save_state(Archive& a, const RunCounters& c, const EpochSums& e) {
  a.write("run/ints",
          c10::IValue(std::vector<int64_t>{c.step, c.importance_steps, c.amp_skipped, e.epoch,
                                           e.started ? 1 : 0, e.seen, e.batch_index, e.gn_count}));
  a.write("run/doubles",
          c10::IValue(std::vector<double>{c.tau, c.seconds, e.loss_sum, e.gn_sum, e.gn_sq, e.elapsed}));
}

void load_state(InArchive& a, RunCounters& c, EpochSums& e) {
  c10::IValue ints, doubles;
  a.read("run/ints", ints);
  a.read("run/doubles", doubles);
  const auto i = ints.toIntVector();
  const auto d = doubles.toDoubleVector();
  TORCH_CHECK(i.size() == 8 && d.size() == 6, "checkpoint: the run state has ", i.size(), " + ", d.size(),
              " fields, expected 8 + 6");
  c.step = i[0];
  c.importance_steps = i[1];
  c.amp_skipped = i[2];
  e.epoch = static_cast<int>(i[3]);
  e.started = i[4] != 0;
  e.seen = i[5];
  e.batch_index = i[6];
  e.gn_count = i[7];
  c.tau = d[0];
  c.seconds = d[1];
  e.loss_sum = d[2];
  e.gn_sum = d[3];
  e.gn_sq = d[4];
  e.elapsed = d[5];
}

// What feeds the epoch loop: a torch::data sampler driven as LibTorch's DataLoader
// drives it with workers(0) (reset at the epoch's start, next(batch) until it is
// exhausted, get_batch), which lets a resumed run continue inside an epoch where
// the DataLoader's begin() would reset the sampler.
struct Feed {
  torch::data::samplers::Sampler<>* sampler = nullptr;
  size_t batch_size = 0;
  std::function<std::pair<double, int64_t>(const torch::data::Example<>&)> on_batch;
  std::function<at::Tensor()> quality_probs;  // undefined: no quality metric
  std::function<void(Archive&)> save_extra = [](Archive&) {};
  std::function<void(InArchive&)> load_extra = [](InArchive&) {};
};

}  // namespace

RunResult train_one(const sgdx::data::DatasetSplits& data, const RunSpec& spec, int64_t seed,
                    const TrainConfig& cfg, const torch::Device& device, const RunHooks& hooks) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  auto model = sgdx::models::make_model(cfg.model, data.input_shape, data.num_classes);
  model->to(device);
  auto optimizer = make_optimizer(spec.optimizer, model->parameters(), cfg);
  if (auto* r = dynamic_cast<sgdx::optim::RSGD*>(optimizer.get())) {
    for (auto& g : r->param_groups())
      static_cast<sgdx::optim::RSGDOptions&>(g.options()).seed(static_cast<uint64_t>(seed));
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
                     model->forward(x), y,
                     torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
                 double(n);
        l.backward();
        total += l.detach().to(torch::kDouble).cpu();
      }
      return total;
    });
  }
  const int64_t batches = n == 0 ? 0 : (n - 1) / cfg.batch_size + 1;  // no overflow for any batch size
  const int64_t total_steps = batches * cfg.epochs;
  const double base_lr = cfg.lr.value_or(default_lr(spec.optimizer));
  auto counts_t = torch::bincount(train.targets(), {}, data.num_classes);
  const std::vector<int64_t> train_counts(counts_t.data_ptr<int64_t>(),
                                          counts_t.data_ptr<int64_t>() + data.num_classes);
  // Scalarization: per-class loss weights w_k(tau) on uniformly drawn examples.
  at::Tensor class_weights;
  if (spec.balance == "scalarize")
    class_weights = sgdx::data::scalarization_weights(train_counts, spec.tau).to(torch::kFloat).to(device);
  // Importance sampling: the quality metric is evaluated on a fixed subset.
  const bool importance = spec.sampling != "uniform";
  const int64_t quality_m = std::min<int64_t>(512, n);
  auto quality_x = train.inputs().narrow(0, 0, quality_m).to(device);
  auto quality_y = train.targets().narrow(0, 0, quality_m).to(device);

  RunResult result{spec.label, seed, {}, {}};
  Progress progress(cfg.progress, fmt::format("[{} seed {}]", spec.label, seed));
  RunCounters c;
  EpochSums e;

  // Mixed precision on the training device (CUDA, or the CPU, whose autocast takes both
  // dtypes: slow there, but it runs this path without a GPU). fp16 needs loss scaling:
  // its range loses small gradients. bf16 has float32's exponent range, so a scaler
  // would protect nothing and only add an inf check per step (and, for LibTorch's
  // optimizers, a host read): none, the scaler is disabled (it passes through).
  const auto amp = amp_dtype(cfg.amp);
  sgdx::amp::GradScaler scaler(sgdx::amp::GradScalerOptions().enabled(cfg.amp == "fp16"));

  // and fills `scores` (when asked) with the batch's fresh scores.
  auto train_step = [&](const at::Tensor& x, const at::Tensor& y, const at::Tensor& weights,
                        at::Tensor* scores) -> double {
    if (cfg.schedule == "cosine") {
      const double lr = 0.5 * base_lr * (1 + std::cos(M_PI * double(c.step) / double(total_steps)));
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
          loss = (class_weights.index_select(0, y) * per_example_ce(logits, y))
                     .mean();  // mean of w*l, not / sum(w)
        } else {
          loss = torch::nn::functional::cross_entropy(logits, y);
        }
      }
    }
    if (amp) logits = logits.to(torch::kFloat);  // the sampling scores below are float32
    auto check_finite = [&](double l) {
      if (!std::isfinite(l)) {
        throw Diverged(fmt::format("training diverged: loss is {} at step {} ({}, lr {}); lower --lr", l,
                                   c.step + 1, spec.label, base_lr),
                       c.step + 1);
      }
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
        *scores =
            cap->norms() /
            (weights.defined()
                 ? weights.to(device).to(torch::kDouble)
                 : torch::ones({x.size(0)}, torch::TensorOptions().dtype(torch::kDouble).device(device)));
      } else {
        *scores = forward_scores(spec.sampling, logits, y);
      }
    }
    std::vector<at::Tensor> grads;
    for (auto& p : model->parameters())
      if (p.grad().defined()) grads.push_back(p.grad());
    // One device-to-host read per step for both numbers (each read is a GPU sync).
    auto gsq =
        grads.empty() ? torch::zeros({}, loss.options()) : at::stack(at::_foreach_norm(grads)).pow(2).sum();
    const auto host =
        at::stack({gsq.detach().to(torch::kDouble), loss.detach().to(torch::kDouble).reshape({})}).cpu();
    last_grad_sq_ = host[0].item<double>();
    const double l = host[1].item<double>();
    check_finite(l);  // before the step: a diverged loss never reaches the optimizer
    if (gq != nullptr && !clustered) gq->observe_loss(l);  // drives the queue length (not when skipped)
    if (svrg == nullptr && !clustered) {
      scaler.step(*optimizer);  // skipped when the fp16 gradients overflowed
      scaler.update();
      if (scaler.is_enabled() && !std::isfinite(last_grad_sq_)) ++c.amp_skipped;
    }
    ++c.step;
    return l;
  };

  // The sampler of the run's mode and what a batch of it does.
  Feed feed;
  std::optional<torch::data::samplers::RandomSampler> random_sampler;
  std::optional<sgdx::data::ImportanceSampler> importance_sampler;
  std::optional<sgdx::data::TemperatureSampler> temperature_sampler;
  std::optional<sgdx::data::Presampler> presampler;
  sgdx::data::ImportanceSamplerOptions so;
  so.seed = static_cast<uint64_t>(seed);
  so.batches_per_epoch = batches;
  auto to_device = [&](const torch::data::Example<>& b) {
    return std::pair{b.data.to(device), b.target.to(device)};
  };
  feed.batch_size = static_cast<size_t>(cfg.batch_size);
  if (importance && cfg.presample > 0) {
    // K&F presampling: B = R * b uniform draws per step; importance steps only when tau pays for them.
    presampler.emplace(cfg.batch_size, cfg.presample, cfg.mix, 0.9, static_cast<uint64_t>(seed));
    so.mix = 1.0;  // uniform
    importance_sampler.emplace(n, so);
    feed.sampler = &*importance_sampler;
    feed.batch_size = static_cast<size_t>(presampler->presample_size());
    feed.on_batch = [&](const torch::data::Example<>& batch) -> std::pair<double, int64_t> {
      importance_sampler->take();
      auto [x, y] = to_device(batch);
      at::Tensor scores;
      double l;
      if (presampler->importance_step()) {
        {
          torch::NoGradGuard no_grad;
          scores = forward_scores(spec.sampling, model->forward(x), y);
        }
        auto [pos, w] = presampler->select(scores);
        pos = pos.to(device);
        l = train_step(x.index_select(0, pos), y.index_select(0, pos), w.to(device), nullptr);
        ++c.importance_steps;
      } else {
        l = train_step(x.narrow(0, 0, cfg.batch_size), y.narrow(0, 0, cfg.batch_size), {}, &scores);
      }
      presampler->update_tau(scores);
      c.tau = presampler->tau();
      return {l, cfg.batch_size};
    };
    feed.quality_probs = [&]() -> at::Tensor {
      torch::NoGradGuard no_grad;
      auto s = forward_scores(spec.sampling, model->forward(quality_x), quality_y).to(torch::kDouble).cpu();
      const double total = s.sum().item<double>();
      if (!(total > 0)) return torch::full({quality_m}, 1.0 / double(quality_m), torch::kDouble);
      return (1 - cfg.mix) * s / total + cfg.mix / double(quality_m);
    };
    feed.save_extra = [&](Archive& a) { presampler->save(a); };
    feed.load_extra = [&](InArchive& a) { presampler->load(a); };
  } else if (importance) {
    so.mix = cfg.mix;
    importance_sampler.emplace(n, so);
    feed.sampler = &*importance_sampler;
    feed.on_batch = [&](const torch::data::Example<>& batch) -> std::pair<double, int64_t> {
      auto ib = importance_sampler->take();
      auto [x, y] = to_device(batch);
      at::Tensor scores;
      const double l = train_step(x, y, ib.weights.to(device), &scores);
      importance_sampler->update(torch::tensor(ib.indices, torch::kLong), scores, cfg.score_beta);
      c.tau = 0.9 * c.tau + 0.1 * sgdx::data::effective_batch_increase(scores);
      ++c.importance_steps;
      return {l, x.size(0)};
    };
    feed.quality_probs = [&]() { return importance_sampler->probabilities(torch::arange(quality_m)); };
  } else {
    if (spec.balance == "none") {
      random_sampler.emplace(static_cast<int64_t>(n));
      feed.sampler = &*random_sampler;
    } else {
      auto schedule = spec.balance == "ts" ? sgdx::data::TemperatureSchedule::constant(spec.tau)
                      : spec.balance == "cooldown"
                          ? sgdx::data::TemperatureSchedule::cooldown(total_steps, spec.tau, 1.0)
                          : sgdx::data::TemperatureSchedule::constant(1.0);  // scalarize: pooled uniform
      temperature_sampler.emplace(train.targets(), schedule, static_cast<uint64_t>(seed), batches,
                                  data.num_classes);
      feed.sampler = &*temperature_sampler;
    }
    feed.on_batch = [&](const torch::data::Example<>& batch) -> std::pair<double, int64_t> {
      auto [x, y] = to_device(batch);
      return {train_step(x, y, {}, nullptr), x.size(0)};
    };
  }

  // Checkpoints: the caller's header, then this run's model, optimizer and state.
  auto save_run = [&](Archive& a) {
    if (hooks.write_header) hooks.write_header(a);
    save_state(a, c, e);
    write_epochs(a, "run/epochs", result.epochs);
    write_rng_state(a, device.is_cuda());
    scaler.save(a);
    Archive sampler_archive(a.compilation_unit());
    feed.sampler->save(sampler_archive);
    a.write("run/sampler", sampler_archive);
    feed.save_extra(a);
  };
  if (hooks.resume) {
    sgdx::load_checkpoint(hooks.checkpoint_path, *model, optimizer.get(), [&](InArchive& a) {
      load_state(a, c, e);
      result.epochs = read_epochs(a, "run/epochs");
      read_rng_state(a, device.is_cuda());
      scaler.load(a);
      InArchive sampler_archive;
      a.read("run/sampler", sampler_archive);
      feed.sampler->load(sampler_archive);
      feed.load_extra(a);
    });
  }
  // After every step: a checkpoint when one is due, a stop when one was asked for.
  auto at_step_boundary = [&] {
    const int sig = stop_signal();
    const bool budget_spent = hooks.steps_left != nullptr && --*hooks.steps_left <= 0;
    const bool stop = sig != 0 || budget_spent;
    const bool due = hooks.checkpoint_every > 0 && c.step % hooks.checkpoint_every == 0;
    if (hooks.checkpoint_path.empty() || !(stop || due)) return;
    sgdx::save_checkpoint(hooks.checkpoint_path, *model, optimizer.get(), save_run);
    if (stop) {
      throw Stopped(fmt::format("{} at step {} of {} seed {}",
                                sig != 0 ? (sig == SIGINT ? "interrupted by SIGINT" : "terminated by SIGTERM")
                                         : "stopped after --stop-after steps",
                                c.step, spec.label, seed),
                    sig);
    }
  };

  for (; e.epoch <= cfg.epochs; e = EpochSums{e.epoch + 1}) {
    if (!e.started) {
      feed.sampler->reset(std::nullopt);
      e.started = true;
    }
    const auto start = std::chrono::steady_clock::now() - std::chrono::duration<double>(e.elapsed);
    auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    while (auto indices = feed.sampler->next(feed.batch_size)) {
      const auto [l, count] = feed.on_batch(train.get_batch(*indices));
      if (std::isfinite(last_grad_sq_)) {  // not the steps a loss scaler skipped
        e.gn_sum += std::sqrt(last_grad_sq_);
        e.gn_sq += last_grad_sq_;
        ++e.gn_count;
      }
      e.loss_sum += l * double(count);
      e.seen += count;
      ++e.batch_index;
      e.elapsed = elapsed();
      progress.update(e.epoch, cfg.epochs, e.batch_index, batches,
                      e.loss_sum / double(std::max<int64_t>(e.seen, 1)), c.seconds + e.elapsed);
      at_step_boundary();
    }
    if (device.is_cuda()) torch::cuda::synchronize();
    c.seconds += elapsed();
    EpochMetrics m;
    m.epoch = e.epoch;
    m.steps = c.step;
    m.train_loss = e.loss_sum / double(std::max<int64_t>(e.seen, 1));
    m.seconds = c.seconds;
    const double k = double(std::max<int64_t>(e.gn_count, 1));
    m.grad_norm_mean = e.gn_sum / k;
    m.grad_norm_var = std::max(e.gn_sq / k - m.grad_norm_mean * m.grad_norm_mean, 0.0);
    m.tau = c.tau;
    m.importance_step_fraction = double(c.importance_steps) / double(std::max<int64_t>(c.step, 1));
    if (feed.quality_probs)
      m.quality =
          sgdx::data::sampling_quality(exact_norms(*model, quality_x, quality_y), feed.quality_probs());
    evaluate(*model, data.test, data.num_classes, train_counts, device, m);
    result.epochs.push_back(m);
    progress.epoch_done(m, cfg.epochs);
    if (hooks.epoch_done) hooks.epoch_done(result);
  }
  if (scaler.is_enabled()) {
    fmt::print("[{} seed {}] fp16: {} of {} steps skipped (inf/nan gradients), final loss scale {}\n",
               spec.label, seed, c.amp_skipped, c.step, scaler.get_scale());
  }
  if (!hooks.model_path.empty()) sgdx::save_checkpoint(hooks.model_path, *model);
  return result;
}

}  // namespace sgdx_train

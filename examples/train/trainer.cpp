// One training run: a fresh model, its optimizer and sampler, the epoch loop, and
// the checkpoints that let it stop at any step and continue bit-identically.

#include <cmath>
#include <csignal>

#include "run_trainer.h"

namespace sgdx_train {
namespace run_detail {

sgdx::data::TensorDataset training_subset(const sgdx::data::TensorDataset& train, int64_t subset) {
  if (subset <= 0 || subset >= train.inputs().size(0)) return train;
  return sgdx::data::TensorDataset(train.inputs().narrow(0, 0, subset), train.targets().narrow(0, 0, subset));
}

// Mixed precision on the training device (CUDA, or the CPU, whose autocast takes both
// dtypes: slow there, but it runs this path without a GPU). fp16 needs loss scaling:
// its range loses small gradients. bf16 has float32's exponent range, so a scaler
// would protect nothing and only add an inf check per step (and, for LibTorch's
// optimizers, a host read): none, the scaler is disabled (it passes through).
RunTrainer::RunTrainer(const sgdx::data::DatasetSplits& data, const RunSpec& spec, int64_t seed,
                       const TrainConfig& cfg, const torch::Device& device, const RunHooks& hooks)
    : data_(data),
      spec_(spec),
      seed_(seed),
      cfg_(cfg),
      device_(device),
      hooks_(hooks),
      world_(hooks.world),
      train_(training_subset(data.train, cfg.train_subset)),
      n_(train_.inputs().size(0)),
      batches_(n_ == 0 ? 0 : (n_ - 1) / cfg.batch_size + 1),  // no overflow for any batch size
      total_steps_(batches_ * cfg.epochs),
      base_lr_(cfg.lr.value_or(default_lr(spec.optimizer))),
      quality_m_(std::min<int64_t>(512, n_)),
      amp_(amp_dtype(cfg.amp)),
      scaler_(sgdx::amp::GradScalerOptions().enabled(cfg.amp == "fp16")),
      result_{spec.label, seed, {}, {}},
      progress_(cfg.progress, fmt::format("[{} seed {}]", spec.label, seed)) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  model_ = sgdx::models::make_model(cfg.model, data.input_shape, data.num_classes);
  model_->to(device);
  if (world_.multi()) {
    // Every rank drew the same weights from the seed; rank 0's are broadcast all the same.
    data_parallel_.emplace(model_->parameters(), world_.comm_ptr());
    auto tensors = model_->parameters();
    for (const auto& b : model_->buffers()) tensors.push_back(b);
    data_parallel_->broadcast_from_root(tensors);
  }
  optimizer_ = make_optimizer(spec.optimizer, model_->parameters(), cfg);
  configure_optimizer();
  if (cfg.schedule == "cosine") schedule_.emplace(*optimizer_, total_steps_);  // per step, to 0
  auto counts = torch::bincount(train_.targets(), {}, data.num_classes);
  train_counts_.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + data.num_classes);
  if (spec.balance == "scalarize")
    class_weights_ = sgdx::data::scalarization_weights(train_counts_, spec.tau).to(torch::kFloat).to(device);
  quality_x_ = train_.inputs().narrow(0, 0, quality_m_).to(device);
  quality_y_ = train_.targets().narrow(0, 0, quality_m_).to(device);
  build_feed();
  if (hooks.resume) load();
}

void RunTrainer::configure_optimizer() {
  const auto seed = static_cast<uint64_t>(seed_);
  if (auto* r = dynamic_cast<sgdx::optim::RSGD*>(optimizer_.get())) {
    for (auto& g : r->param_groups()) static_cast<sgdx::optim::RSGDOptions&>(g.options()).seed(seed);
  }
  gq_ = dynamic_cast<sgdx::optim::GradQueueSGDM*>(optimizer_.get());
  if (gq_ != nullptr) {
    static_cast<sgdx::optim::GradQueueSGDMOptions&>(gq_->defaults())
        .clusters(spec_.clusters)
        .seed(seed)
        .fused_cuda(cfg_.fused_cuda);
  }
  clustered_ = gq_ != nullptr && spec_.clusters > 1;
  // The clustered step runs its own backward: it gathers the ranks' features and
  // losses, clusters the global batch and sums the ranks' cluster gradients itself.
  if (clustered_ && world_.multi()) gq_->set_communicator(world_.comm_ptr());
  if (cfg_.fused_cuda && device_.is_cuda())
    capture_options_.backend = sgdx::ops::PerSampleBackend::fused_cuda;
  if (clustered_ && cfg_.gq_path == "fast") gq_capture_.emplace(*model_, capture_options_);
  svrg_ = dynamic_cast<sgdx::optim::SVRG*>(optimizer_.get());
  if (svrg_ == nullptr) return;
  // SVRG on a deep net: the full gradient is a loop over the training set; the
  // minibatch closure is evaluated at the snapshot and at the current point.
  auto& o = static_cast<sgdx::optim::SVRGOptions&>(svrg_->param_groups()[0].options());
  o.n(n_).b(std::min<int64_t>(cfg_.batch_size, n_));
  svrg_->set_full_gradient_closure([this] { return full_gradient(); });
}

// grad F into .grad, F returned. Across processes each rank sums its share of the
// training set and the shares' gradients are summed (average_gradients divides by
// the world size, so each share's loss is scaled by it).
at::Tensor RunTrainer::full_gradient() {
  const auto [offset, count] = world_.share(n_);
  at::Tensor total = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble));
  for (int64_t i = 0; i < count; i += 2000) {
    const int64_t len = std::min<int64_t>(2000, count - i);
    auto x = train_.inputs().narrow(0, offset + i, len).to(device_);
    auto y = train_.targets().narrow(0, offset + i, len).to(device_);
    auto l =
        torch::nn::functional::cross_entropy(
            model_->forward(x), y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)) /
        double(n_);
    (world_.multi() ? l * double(world_.size()) : l).backward();
    total += l.detach().to(torch::kDouble).cpu();
  }
  if (!world_.multi()) return total;
  average_gradients();
  return torch::full({}, world_.sum({total.item<double>()})[0], torch::TensorOptions().dtype(torch::kDouble));
}

// This rank's share of a global batch drawn by the sampler.
// --augment: a pure function of (seed, step, row of the global batch), so a resumed run and
// N ranks that each augment their share see the images one uninterrupted process sees.
at::Tensor RunTrainer::augmented(const at::Tensor& images, int64_t first_row) const {
  if (!cfg_.augment) return images;
  return sgdx::data::random_crop_flip(images, {}, static_cast<uint64_t>(seed_),
                                      static_cast<uint64_t>(c_.step), first_row);
}

torch::data::Example<> RunTrainer::local_batch(const std::vector<size_t>& global) {
  global_count_ = static_cast<int64_t>(global.size());
  local_count_ = global_count_;
  if (!world_.multi()) {
    auto batch = train_.get_batch(global);
    return {augmented(batch.data, 0), batch.target};
  }
  TORCH_CHECK(global_count_ >= world_.size(), "a batch of ", global_count_, " examples cannot be shared by ",
              world_.size(),
              " processes: choose --batch-size and --train-subset so that every batch, the "
              "last of an epoch too, has at least one example per process");
  const auto [offset, count] = world_.share(global_count_);
  local_count_ = count;
  auto batch =
      train_.get_batch(std::vector<size_t>(global.begin() + offset, global.begin() + offset + count));
  return {augmented(batch.data, offset), batch.target};
}

// This rank's rows of a tensor over the global batch (weights, positions).
at::Tensor RunTrainer::local_rows(const at::Tensor& global_rows) const {
  if (!world_.multi()) return global_rows;
  const auto [offset, count] = world_.share(global_rows.size(0));
  return global_rows.narrow(0, offset, count);
}

// A share's mean loss, weighted so that the mean over ranks of the shares'
// gradients is the gradient of the whole batch's mean loss (a last batch of an
// epoch may split unevenly; even shares keep the loss as it is).
at::Tensor RunTrainer::share_loss(const at::Tensor& loss) const {
  if (!world_.multi() || local_count_ * world_.size() == global_count_) return loss;
  return loss * (double(local_count_ * world_.size()) / double(global_count_));
}

void RunTrainer::average_gradients() {
  if (data_parallel_) data_parallel_->average_gradients();
}

// Optimizer step on (x, y) with optional per-example weights; returns the loss
// and fills `scores` (when asked) with the batch's fresh scores.
double RunTrainer::train_step(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weights,
                              at::Tensor* scores) {
  optimizer_->zero_grad();
  std::optional<sgdx::ops::PerSampleGradients> cap;
  if (scores != nullptr && spec_.sampling == "exact") cap.emplace(*model_, capture_options_);
  at::Tensor logits, features, loss;
  {
    // The forward and the loss under autocast (PyTorch's recipe); backward and step outside.
    AutocastRegion autocast(device_.type(), amp_);
    if (clustered_) {
      std::tie(logits, features) = model_->forward_features(x);
    } else {
      logits = model_->forward(x);
      if (weights.defined()) {
        loss = sgdx::data::weighted_mean_loss(per_example_ce(logits, y), weights);
      } else if (class_weights_.defined()) {
        loss = (class_weights_.index_select(0, y) * per_example_ce(logits, y))
                   .mean();  // mean of w*l, not / sum(w)
      } else {
        loss = torch::nn::functional::cross_entropy(logits, y);
      }
    }
  }
  if (amp_) logits = logits.to(torch::kFloat);  // the sampling scores below are float32
  if (loss.defined()) loss = share_loss(loss);
  loss = backward(x, y, logits, features, loss, cap ? &*cap : nullptr);
  if (scores != nullptr) {
    if (cap) {
      // The capture saw grad(w_i l_i); the score is ||grad l_i||.
      const auto opts = torch::TensorOptions().dtype(torch::kDouble).device(device_);
      *scores = cap->norms() / (weights.defined() ? weights.to(opts) : torch::ones({x.size(0)}, opts));
    } else {
      *scores = forward_scores(spec_.sampling, logits, y);
    }
  }
  return finish_step(loss);
}

// The backward of the run's kind; returns the loss that was differentiated.
at::Tensor RunTrainer::backward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& logits,
                                const at::Tensor& features, at::Tensor loss,
                                sgdx::ops::PerSampleGradients* cap) {
  if (clustered_) {
    // k-means on the last Linear's inputs, scarcity-weighted cluster gradients, momentum step
    // (clustered_step runs the backward and the step). A last batch smaller than K is split
    // into one cluster per example.
    auto& gq_opts = static_cast<sgdx::optim::GradQueueSGDMOptions&>(gq_->defaults());
    gq_opts.clusters(std::min<int64_t>(spec_.clusters, global_count_));
    auto losses = per_example_ce(logits, y);
    // The whole batch's mean loss: every rank diverges together, before a collective.
    check_finite(world_.sum({losses.detach().to(torch::kDouble).sum().item<double>()})[0] /
                 double(global_count_));
    loss = gq_->clustered_step(losses, features.detach(), gq_capture_ ? &*gq_capture_ : nullptr);
    gq_opts.clusters(spec_.clusters);
    return loss;
  }
  if (cap != nullptr) cap->attach(loss, x.size(0));
  if (svrg_ != nullptr) {
    // The same minibatch at the snapshot and at the current point.
    return svrg_->step([&] {
      auto l = share_loss(torch::nn::functional::cross_entropy(model_->forward(x), y));
      l.backward();
      average_gradients();
      return l;
    });
  }
  scaler_.scale(loss).backward();
  average_gradients();  // before the unscale: every rank then finds the same inf/nan
  // The gradient norm below is the true gradient's (inf/nan when the step is skipped).
  scaler_.unscale_(*optimizer_);
  return loss;
}

// The gradient norm and the loss in one device-to-host read (each read is a GPU
// sync), the divergence check, and the step where the backward did not take it.
double RunTrainer::finish_step(const at::Tensor& loss) {
  std::vector<at::Tensor> grads;
  for (auto& p : model_->parameters())
    if (p.grad().defined()) grads.push_back(p.grad());
  auto gsq =
      grads.empty() ? torch::zeros({}, loss.options()) : at::stack(at::_foreach_norm(grads)).pow(2).sum();
  const auto host =
      at::stack({gsq.detach().to(torch::kDouble), loss.detach().to(torch::kDouble).reshape({})}).cpu();
  last_grad_sq_ = host[0].item<double>();  // of the averaged gradient: the same on every rank
  double l = host[1].item<double>();
  if (world_.multi()) {
    // The whole batch's loss (share_loss weighted the shares), and whether any rank
    // was asked to stop: every rank diverges, steps and stops together.
    const auto sums = world_.sum({l, stop_signal() != 0 ? 1.0 : 0.0});
    l = sums[0] / double(world_.size());
    stop_agreed_ = sums[1] > 0;
  }
  check_finite(l);  // before the step: a diverged loss never reaches the optimizer
  if (gq_ != nullptr && !clustered_) gq_->observe_loss(l);  // drives the queue length (not when skipped)
  if (svrg_ == nullptr && !clustered_) {
    scaler_.step(*optimizer_);  // skipped when the fp16 gradients overflowed
    scaler_.update();
    if (scaler_.is_enabled() && !std::isfinite(last_grad_sq_)) ++c_.amp_skipped;
  }
  ++c_.step;
  if (schedule_) schedule_->step();  // the lr of the next step
  return l;
}

void RunTrainer::check_finite(double loss) const {
  if (std::isfinite(loss)) return;
  throw Diverged(fmt::format("training diverged: loss is {} at step {} ({}, lr {}); lower --lr", loss,
                             c_.step + 1, spec_.label, base_lr_),
                 c_.step + 1);
}

void RunTrainer::train_epoch() {
  if (!e_.started) {
    feed_.sampler->reset(std::nullopt);
    e_.started = true;
  }
  const auto start = std::chrono::steady_clock::now() - std::chrono::duration<double>(e_.elapsed);
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  while (auto indices = feed_.sampler->next(feed_.batch_size)) {
    const auto [l, count] = feed_.on_batch(*indices);
    if (std::isfinite(last_grad_sq_)) {  // not the steps a loss scaler skipped
      e_.gn_sum += std::sqrt(last_grad_sq_);
      e_.gn_sq += last_grad_sq_;
      ++e_.gn_count;
    }
    e_.loss_sum += l * double(count);
    e_.seen += count;
    ++e_.batch_index;
    e_.elapsed = elapsed();
    progress_.update(e_.epoch, cfg_.epochs, e_.batch_index, batches_,
                     e_.loss_sum / double(std::max<int64_t>(e_.seen, 1)), c_.seconds + e_.elapsed);
    at_step_boundary();
  }
  if (device_.is_cuda()) torch::cuda::synchronize();
  c_.seconds += elapsed();
}

EpochMetrics RunTrainer::epoch_metrics() {
  EpochMetrics m;
  m.epoch = e_.epoch;
  m.steps = c_.step;
  m.train_loss = e_.loss_sum / double(std::max<int64_t>(e_.seen, 1));
  m.seconds = c_.seconds;
  const double k = double(std::max<int64_t>(e_.gn_count, 1));
  m.grad_norm_mean = e_.gn_sum / k;
  m.grad_norm_var = std::max(e_.gn_sq / k - m.grad_norm_mean * m.grad_norm_mean, 0.0);
  m.tau = c_.tau;
  m.importance_step_fraction = double(c_.importance_steps) / double(std::max<int64_t>(c_.step, 1));
  if (feed_.quality_probs)
    m.quality =
        sgdx::data::sampling_quality(exact_norms(*model_, quality_x_, quality_y_), feed_.quality_probs());
  if (data_.validation) {
    EpochMetrics v;
    evaluate(*model_, *data_.validation, data_.num_classes, train_counts_, device_, v, world_);
    m.val_loss = v.test_loss;
    m.val_accuracy = v.test_accuracy;
  }
  evaluate(*model_, data_.test, data_.num_classes, train_counts_, device_, m, world_);
  return m;
}

RunResult RunTrainer::run() {
  for (; e_.epoch <= cfg_.epochs; e_ = EpochSums{e_.epoch + 1}) {
    train_epoch();
    result_.epochs.push_back(epoch_metrics());
    progress_.epoch_done(result_.epochs.back(), cfg_.epochs);
    if (hooks_.epoch_done) hooks_.epoch_done(result_);
  }
  if (scaler_.is_enabled() && world_.root()) {
    fmt::print("[{} seed {}] fp16: {} of {} steps skipped (inf/nan gradients), final loss scale {}\n",
               spec_.label, seed_, c_.amp_skipped, c_.step, scaler_.get_scale());
  }
  if (!hooks_.model_path.empty()) sgdx::save_checkpoint(hooks_.model_path, *model_);
  return result_;
}

}  // namespace run_detail

RunResult train_one(const sgdx::data::DatasetSplits& data, const RunSpec& spec, int64_t seed,
                    const TrainConfig& cfg, const torch::Device& device, const RunHooks& hooks) {
  run_detail::RunTrainer trainer(data, spec, seed, cfg, device, hooks);
  return trainer.run();
}

}  // namespace sgdx_train

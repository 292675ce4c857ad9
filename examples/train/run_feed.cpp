// The feeds of a run: its sampler and what one batch of it does, per sampling mode.
#include "run_trainer.h"

namespace sgdx_train::run_detail {

void RunTrainer::build_feed() {
  feed_.batch_size = static_cast<size_t>(cfg_.batch_size);
  if (spec_.sampling != "uniform" && cfg_.presample > 0) {
    feed_presampled();
  } else if (spec_.sampling != "uniform") {
    feed_importance();
  } else {
    feed_plain();
  }
}

// K&F presampling: B = R * b uniform draws per step; importance steps only when tau pays for them.
void RunTrainer::feed_presampled() {
  presampler_.emplace(cfg_.batch_size, cfg_.presample, cfg_.mix, 0.9, static_cast<uint64_t>(seed_));
  sgdx::data::ImportanceSamplerOptions so;
  so.seed = static_cast<uint64_t>(seed_);
  so.batches_per_epoch = batches_;
  so.mix = 1.0;  // uniform
  importance_sampler_.emplace(n_, so);
  feed_.sampler = &*importance_sampler_;
  feed_.batch_size = static_cast<size_t>(presampler_->presample_size());
  feed_.on_batch = [this](const torch::data::Example<>& batch) -> std::pair<double, int64_t> {
    importance_sampler_->take();
    auto x = batch.data.to(device_), y = batch.target.to(device_);
    at::Tensor scores;
    double l;
    if (presampler_->importance_step()) {
      {
        torch::NoGradGuard no_grad;
        scores = forward_scores(spec_.sampling, model_->forward(x), y);
      }
      auto [pos, w] = presampler_->select(scores);
      pos = pos.to(device_);
      l = train_step(x.index_select(0, pos), y.index_select(0, pos), w.to(device_), nullptr);
      ++c_.importance_steps;
    } else {
      l = train_step(x.narrow(0, 0, cfg_.batch_size), y.narrow(0, 0, cfg_.batch_size), {}, &scores);
    }
    presampler_->update_tau(scores);
    c_.tau = presampler_->tau();
    return {l, cfg_.batch_size};
  };
  feed_.quality_probs = [this]() -> at::Tensor {
    torch::NoGradGuard no_grad;
    auto s = forward_scores(spec_.sampling, model_->forward(quality_x_), quality_y_).to(torch::kDouble).cpu();
    const double total = s.sum().item<double>();
    if (!(total > 0)) return torch::full({quality_m_}, 1.0 / double(quality_m_), torch::kDouble);
    return (1 - cfg_.mix) * s / total + cfg_.mix / double(quality_m_);
  };
  feed_.save_extra = [this](Archive& a) { presampler_->save(a); };
  feed_.load_extra = [this](InArchive& a) { presampler_->load(a); };
}

// Importance sampling from cached scores, weights 1/(N p) on the losses.
void RunTrainer::feed_importance() {
  sgdx::data::ImportanceSamplerOptions so;
  so.seed = static_cast<uint64_t>(seed_);
  so.batches_per_epoch = batches_;
  so.mix = cfg_.mix;
  importance_sampler_.emplace(n_, so);
  feed_.sampler = &*importance_sampler_;
  feed_.on_batch = [this](const torch::data::Example<>& batch) -> std::pair<double, int64_t> {
    auto ib = importance_sampler_->take();
    auto x = batch.data.to(device_), y = batch.target.to(device_);
    at::Tensor scores;
    const double l = train_step(x, y, ib.weights.to(device_), &scores);
    importance_sampler_->update(torch::tensor(ib.indices, torch::kLong), scores, cfg_.score_beta);
    c_.tau = 0.9 * c_.tau + 0.1 * sgdx::data::effective_batch_increase(scores);
    ++c_.importance_steps;
    return {l, x.size(0)};
  };
  feed_.quality_probs = [this]() { return importance_sampler_->probabilities(torch::arange(quality_m_)); };
}

// Uniform epochs (a permutation per epoch), or temperature sampling / Cooldown.
void RunTrainer::feed_plain() {
  if (spec_.balance == "none") {
    random_sampler_.emplace(n_);
    feed_.sampler = &*random_sampler_;
  } else {
    using Schedule = sgdx::data::TemperatureSchedule;
    auto schedule = spec_.balance == "ts"         ? Schedule::constant(spec_.tau)
                    : spec_.balance == "cooldown" ? Schedule::cooldown(total_steps_, spec_.tau, 1.0)
                                                  : Schedule::constant(1.0);  // scalarize: pooled uniform
    temperature_sampler_.emplace(train_.targets(), schedule, static_cast<uint64_t>(seed_), batches_,
                                 data_.num_classes);
    feed_.sampler = &*temperature_sampler_;
  }
  feed_.on_batch = [this](const torch::data::Example<>& batch) -> std::pair<double, int64_t> {
    return {train_step(batch.data.to(device_), batch.target.to(device_), {}, nullptr), batch.data.size(0)};
  };
}

}  // namespace sgdx_train::run_detail

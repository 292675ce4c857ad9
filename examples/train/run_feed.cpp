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
  // Across processes every rank holds the whole presample (the selection may take any
  // of it), scores its share, and all select from the gathered scores alike.
  feed_.on_batch = [this](const std::vector<size_t>& indices) -> std::pair<double, int64_t> {
    importance_sampler_->take();
    const auto batch = train_.get_batch(indices);
    auto x = augmented(batch.data, 0).to(device_),
         y = batch.target.to(device_);  // every rank: the whole presample
    at::Tensor scores;
    double l;
    global_count_ = cfg_.batch_size;
    local_count_ = world_.share(cfg_.batch_size).second;
    if (presampler_->importance_step()) {
      {
        torch::NoGradGuard no_grad;
        scores = world_.gather(forward_scores(spec_.sampling, model_->forward(local_rows(x)), local_rows(y)),
                               x.size(0));
      }
      auto [pos, w] = presampler_->select(scores);
      pos = local_rows(pos).to(device_);
      l = train_step(x.index_select(0, pos), y.index_select(0, pos), local_rows(w).to(device_), nullptr);
      ++c_.importance_steps;
    } else {
      l = train_step(local_rows(x.narrow(0, 0, cfg_.batch_size)), local_rows(y.narrow(0, 0, cfg_.batch_size)),
                     {}, &scores);
      scores = world_.gather(scores, cfg_.batch_size);
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
  // Across processes every rank keeps the same sampler: it updates it with the whole
  // batch's scores, gathered from the shares.
  feed_.on_batch = [this](const std::vector<size_t>& indices) -> std::pair<double, int64_t> {
    auto ib = importance_sampler_->take();
    const auto batch = local_batch(indices);
    auto x = batch.data.to(device_), y = batch.target.to(device_);
    at::Tensor scores;
    const double l = train_step(x, y, local_rows(ib.weights).to(device_), &scores);
    scores = world_.gather(scores, global_count_);
    importance_sampler_->update(torch::tensor(ib.indices, torch::kLong), scores, cfg_.score_beta);
    c_.tau = 0.9 * c_.tau + 0.1 * sgdx::data::effective_batch_increase(scores);
    ++c_.importance_steps;
    return {l, global_count_};
  };
  feed_.quality_probs = [this]() { return importance_sampler_->probabilities(torch::arange(quality_m_)); };
}

// Uniform epochs (a permutation per epoch), or temperature sampling / Cooldown.
void RunTrainer::feed_plain() {
  if (spec_.balance == "none") {
    const int64_t last = n_ % cfg_.batch_size;
    TORCH_CHECK(!world_.multi() || last == 0 || last >= world_.size(), "the last batch of each epoch has ",
                last, " examples, fewer than the ", world_.size(),
                " processes: choose --batch-size and --train-subset so that it has none or at least one per "
                "process");
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
  feed_.on_batch = [this](const std::vector<size_t>& indices) -> std::pair<double, int64_t> {
    const auto batch = local_batch(indices);
    return {train_step(batch.data.to(device_), batch.target.to(device_), {}, nullptr), global_count_};
  };
}

}  // namespace sgdx_train::run_detail

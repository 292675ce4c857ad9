// A run in a checkpoint: its counters, partial sums, sampler, RNG streams and loss scaler.
#include <csignal>

#include "run_trainer.h"

namespace sgdx_train::run_detail {

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

// A checkpoint: the caller's header, then this run's state (the model and the
// optimizer are saved by sgdx::save_checkpoint around it).
void RunTrainer::save(Archive& a) {
  if (hooks_.write_header) hooks_.write_header(a);
  save_state(a, c_, e_);
  write_epochs(a, "run/epochs", result_.epochs);
  write_rng_state(a, device_.is_cuda());
  scaler_.save(a);
  Archive sampler_archive(a.compilation_unit());
  feed_.sampler->save(sampler_archive);
  a.write("run/sampler", sampler_archive);
  feed_.save_extra(a);
}

void RunTrainer::load() {
  const auto& path = hooks_.resume_path.empty() ? hooks_.checkpoint_path : hooks_.resume_path;
  sgdx::load_checkpoint(path, *model_, optimizer_.get(), [this](InArchive& a) {
    load_state(a, c_, e_);
    result_.epochs = read_epochs(a, "run/epochs");
    read_rng_state(a, device_.is_cuda());
    scaler_.load(a);
    InArchive sampler_archive;
    a.read("run/sampler", sampler_archive);
    feed_.sampler->load(sampler_archive);
    feed_.load_extra(a);
  });
  if (schedule_) schedule_->set_steps(c_.step);
}

// After every step: a checkpoint when one is due, a stop when one was asked for.
// Across processes the ranks stop at the same step (a signal to any rank counts, agreed
// in finish_step); rank 0 writes the checkpoint, which holds every rank's state, and
// the others wait for it before they exit.
void RunTrainer::at_step_boundary() {
  const int sig = stop_signal();
  const bool budget_spent = hooks_.steps_left != nullptr && --*hooks_.steps_left <= 0;
  const bool signalled = world_.multi() ? stop_agreed_ : sig != 0;
  const bool stop = signalled || budget_spent;
  const bool due = hooks_.checkpoint_every > 0 && c_.step % hooks_.checkpoint_every == 0;
  if (hooks_.checkpoint_path.empty() || !(stop || due)) return;
  if (world_.root())
    sgdx::save_checkpoint(hooks_.checkpoint_path, *model_, optimizer_.get(), [this](Archive& a) { save(a); });
  if (!stop) return;
  if (world_.multi()) world_.comm().barrier();
  const std::string why = sig == SIGINT    ? "interrupted by SIGINT"
                          : sig == SIGTERM ? "terminated by SIGTERM"
                          : signalled      ? "stopped with the other processes (one was signalled)"
                                           : "stopped after the --stop-after steps";
  throw Stopped(fmt::format("{} at step {} of {} seed {}", why, c_.step, spec_.label, seed_), sig);
}

}  // namespace sgdx_train::run_detail

#pragma once
// sgdx-train's checkpoints: one file, <out>/checkpoint.pt, written atomically by
// sgdx::save_checkpoint. It holds the model and optimizer of the run in progress,
// a header (the invocation's config, the finished runs' metrics, which run is next)
// and the run's own state (sampler, RNG streams, counters, the epoch's partial sums).
#include <torch/serialize/archive.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "report.h"

namespace sgdx_train {

/// Exit status after a stop with its checkpoint written (sysexits' EX_TEMPFAIL:
/// try again later, here with --resume).
constexpr int kExitStopped = 75;

/// Thrown at a step boundary once the checkpoint is written.
class Stopped : public std::runtime_error {
 public:
  Stopped(const std::string& why, int signal) : std::runtime_error(why), signal_(signal) {}
  int signal() const { return signal_; }  ///< 0: --stop-after

 private:
  int signal_;
};

/// SIGINT and SIGTERM ask for a stop at the next step boundary; a second one
/// terminates at once (the last checkpoint stays loadable: writes are atomic).
void install_stop_signals();
/// The signal that asked for a stop, 0 when none did.
int stop_signal();

/// What the header of a checkpoint holds besides the run in progress.
struct CheckpointHeader {
  // An object, not json's default null: its noexcept default constructor has a throwing branch.
  nlohmann::json config = nlohmann::json::object();  ///< compared with the resuming run's
  std::vector<RunResult> finished;                   ///< runs of a --compare / --seeds invocation that ended
  int64_t next_run = 0;  ///< index of the run in progress, over (spec, seed) pairs
};

void write_header(torch::serialize::OutputArchive& archive, const CheckpointHeader& header);
/// Reads the header of `path` without touching any model; names the file in every error.
CheckpointHeader read_header(const std::string& path);

/// The fields of two configs that differ, "key: A (checkpoint) vs B (now)", joined
/// by "; " (empty when they agree). Keys listed in `ignored` are skipped.
std::string config_differences(const nlohmann::json& saved, const nlohmann::json& now,
                               const std::vector<std::string>& ignored);

/// A run's finished epochs, bit-exact (NaN included), for the run state and the header.
void write_epochs(torch::serialize::OutputArchive& archive, const std::string& key,
                  const std::vector<EpochMetrics>& epochs);
std::vector<EpochMetrics> read_epochs(torch::serialize::InputArchive& archive, const std::string& key);

/// The default generators that training draws from (CPU: RandomSampler's
/// permutations; the device's when it is CUDA).
void write_rng_state(torch::serialize::OutputArchive& archive, bool cuda);
void read_rng_state(torch::serialize::InputArchive& archive, bool cuda);

/// A 64-bit hash of a tensor's contents (dtype, shape, bytes): the data fingerprint
/// that makes a checkpoint refuse a run on other data.
std::string content_hash(const at::Tensor& tensor);

/// Removes what an earlier process killed during a write left behind: the
/// temporary siblings (`<name>.tmp.<pid>`) of the files sgdx-train writes in `dir`.
void remove_stale_temporaries(const std::string& dir);

}  // namespace sgdx_train

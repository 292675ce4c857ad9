#include "resume.h"

#include <ATen/Context.h>
#include <c10/core/Device.h>
#include <fmt/core.h>
#include <torch/serialize.h>

#include <csignal>
#include <filesystem>
#include <set>

#include "../common/fnv1a.h"

namespace sgdx_train {
namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
  std::signal(sig, SIG_DFL);  // a second signal terminates at once
}

constexpr int64_t kHeaderFormat = 1;

// FNV-1a's offset basis short of its last digit: the seed that checkpoints' data
// fingerprints were written with, kept so that they still match.
constexpr uint64_t kContentHashSeed = 1469598103934665603ull;

// EpochMetrics as one float64 row: the fixed fields, then the class count, the
// per-class accuracies and losses, and the validation loss and accuracy (absent from
// older checkpoints: NaN there). Doubles keep every value, NaN included.
constexpr int64_t kFixedFields = 14;

std::vector<double> encode(const EpochMetrics& e) {
  std::vector<double> v{double(e.epoch),
                        double(e.steps),
                        e.train_loss,
                        e.test_loss,
                        e.test_accuracy,
                        e.seconds,
                        e.grad_norm_mean,
                        e.grad_norm_var,
                        e.head_accuracy,
                        e.tail_accuracy,
                        e.quality,
                        e.tau,
                        e.importance_step_fraction,
                        double(e.class_accuracy.size())};
  v.insert(v.end(), e.class_accuracy.begin(), e.class_accuracy.end());
  v.insert(v.end(), e.class_loss.begin(), e.class_loss.end());
  v.push_back(e.val_loss);
  v.push_back(e.val_accuracy);
  return v;
}

EpochMetrics decode(const double* v, int64_t len) {
  TORCH_CHECK(len >= kFixedFields, "checkpoint: an epoch record has ", len,
              " fields, expected >= ", kFixedFields);
  EpochMetrics e;
  e.epoch = static_cast<int>(v[0]);
  e.steps = static_cast<long long>(v[1]);
  e.train_loss = v[2];
  e.test_loss = v[3];
  e.test_accuracy = v[4];
  e.seconds = v[5];
  e.grad_norm_mean = v[6];
  e.grad_norm_var = v[7];
  e.head_accuracy = v[8];
  e.tail_accuracy = v[9];
  e.quality = v[10];
  e.tau = v[11];
  e.importance_step_fraction = v[12];
  const auto classes = static_cast<int64_t>(v[13]);
  const int64_t per_class_end = kFixedFields + 2 * classes;
  TORCH_CHECK(classes >= 0 && (len == per_class_end || len == per_class_end + 2),
              "checkpoint: an epoch record of ", len, " fields does not hold ", classes, " classes");
  e.class_accuracy.assign(v + kFixedFields, v + kFixedFields + classes);
  e.class_loss.assign(v + kFixedFields + classes, v + per_class_end);
  if (len == per_class_end + 2) {
    e.val_loss = v[per_class_end];
    e.val_accuracy = v[per_class_end + 1];
  }
  return e;
}

c10::IValue read_value(torch::serialize::InputArchive& archive, const std::string& key) {
  c10::IValue v;
  archive.read(key, v);
  return v;
}

}  // namespace

void install_stop_signals() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

int stop_signal() {
  return g_stop_signal.load();
}

void write_epochs(torch::serialize::OutputArchive& archive, const std::string& key,
                  const std::vector<EpochMetrics>& epochs) {
  archive.write(key + "/count", c10::IValue(static_cast<int64_t>(epochs.size())));
  for (size_t i = 0; i < epochs.size(); ++i) {
    auto row = encode(epochs[i]);
    archive.write(key + "/" + std::to_string(i), torch::tensor(row, torch::kDouble), /*is_buffer=*/true);
  }
}

std::vector<EpochMetrics> read_epochs(torch::serialize::InputArchive& archive, const std::string& key) {
  const int64_t count = read_value(archive, key + "/count").toInt();
  TORCH_CHECK(count >= 0, "checkpoint: negative epoch count ", count);
  std::vector<EpochMetrics> epochs;
  for (int64_t i = 0; i < count; ++i) {
    at::Tensor row;
    archive.read(key + "/" + std::to_string(i), row, /*is_buffer=*/true);
    row = row.to(torch::kDouble).contiguous();
    epochs.push_back(decode(row.data_ptr<double>(), row.numel()));
  }
  return epochs;
}

void write_header(torch::serialize::OutputArchive& archive, const CheckpointHeader& header) {
  archive.write("header/format", c10::IValue(kHeaderFormat));
  archive.write("header/config", c10::IValue(header.config.dump()));
  archive.write("header/next_run", c10::IValue(header.next_run));
  archive.write("header/finished", c10::IValue(static_cast<int64_t>(header.finished.size())));
  for (size_t i = 0; i < header.finished.size(); ++i) {
    const auto& r = header.finished[i];
    const std::string key = "header/finished/" + std::to_string(i);
    archive.write(key + "/label", c10::IValue(r.optimizer));
    archive.write(key + "/seed", c10::IValue(static_cast<int64_t>(r.seed)));
    archive.write(key + "/status", c10::IValue(r.status));
    write_epochs(archive, key + "/epochs", r.epochs);
  }
}

CheckpointHeader read_header(const std::string& path) {
  std::error_code ec;
  TORCH_CHECK(std::filesystem::is_regular_file(path, ec), "no checkpoint '", path,
              "' to resume from (it is written by --checkpoint-every, --stop-after or a SIGINT/SIGTERM)");
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    torch::serialize::InputArchive extra;
    archive.read("extra", extra);
    CheckpointHeader h;
    TORCH_CHECK(read_value(extra, "header/format").toInt() == kHeaderFormat, "header format ",
                read_value(extra, "header/format").toInt(), ", this sgdx-train reads ", kHeaderFormat);
    h.config = nlohmann::json::parse(read_value(extra, "header/config").toStringRef());
    h.next_run = read_value(extra, "header/next_run").toInt();
    const int64_t finished = read_value(extra, "header/finished").toInt();
    for (int64_t i = 0; i < finished; ++i) {
      const std::string key = "header/finished/" + std::to_string(i);
      RunResult r;
      r.optimizer = read_value(extra, key + "/label").toStringRef();
      r.seed = read_value(extra, key + "/seed").toInt();
      r.status = read_value(extra, key + "/status").toStringRef();
      r.epochs = read_epochs(extra, key + "/epochs");
      h.finished.push_back(std::move(r));
    }
    return h;
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    TORCH_CHECK(false, "checkpoint '", path,
                "' is not a readable sgdx-train checkpoint: ", what.substr(0, what.find('\n')));
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "checkpoint '", path, "' is not a readable sgdx-train checkpoint: ", e.what());
  }
}

std::string config_differences(const nlohmann::json& saved, const nlohmann::json& now,
                               const std::vector<std::string>& ignored) {
  std::string out;
  std::set<std::string> keys;
  for (const auto& [k, v] : saved.items()) keys.insert(k);
  for (const auto& [k, v] : now.items()) keys.insert(k);
  for (const auto& k : keys) {
    if (std::find(ignored.begin(), ignored.end(), k) != ignored.end()) continue;
    const auto a = saved.contains(k) ? saved[k].dump() : "(none)";
    const auto b = now.contains(k) ? now[k].dump() : "(none)";
    if (a == b) continue;
    out += fmt::format("{}{}: {} (checkpoint) vs {} (now)", out.empty() ? "" : "; ", k, a, b);
  }
  return out;
}

void write_rng_state(torch::serialize::OutputArchive& archive, bool cuda) {
  auto save = [&](at::Generator gen, const std::string& key) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    archive.write(key, gen.get_state(), /*is_buffer=*/true);
  };
  save(at::globalContext().defaultGenerator(c10::Device(c10::kCPU)), "rng/cpu");
  if (cuda) save(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA)), "rng/cuda");
}

void read_rng_state(torch::serialize::InputArchive& archive, bool cuda) {
  auto load = [&](at::Generator gen, const std::string& key) {
    at::Tensor state;
    archive.read(key, state, /*is_buffer=*/true);
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  };
  load(at::globalContext().defaultGenerator(c10::Device(c10::kCPU)), "rng/cpu");
  if (cuda) load(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA)), "rng/cuda");
}

std::string content_hash(const at::Tensor& tensor) {
  namespace ex = sgdx_examples;
  const auto t = tensor.contiguous().cpu();
  // Word-wise FNV-1a over dtype, shape and bytes.
  uint64_t h = kContentHashSeed;
  h = ex::fnv1a_mix(h, static_cast<uint64_t>(t.scalar_type()));
  for (const auto s : t.sizes()) h = ex::fnv1a_mix(h, static_cast<uint64_t>(s));
  h = ex::fnv1a_words(t.data_ptr(), t.numel() * t.element_size(), h);
  return fmt::format("{:016x}", h);
}

void remove_stale_temporaries(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename().string();
    for (const char* prefix :
         {"checkpoint.pt.tmp.", "metrics.csv.tmp.", "metrics.json.tmp.", "summary.md.tmp.",
          "training.png.tmp", "training.png.dat", "training.png.gp"}) {
      if (name.rfind(prefix, 0) == 0) std::filesystem::remove(entry.path(), ec);
    }
  }
}

}  // namespace sgdx_train

#include "invocation.h"

#include <fmt/core.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "../common/cli_checks.h"
#include "../common/fnv1a.h"
#include "sgdx/data/temperature.h"

namespace sgdx_train {
namespace {

[[noreturn]] void refuse(const std::string& why) {
  throw std::runtime_error(why);
}

// A comma-separated list; an empty list or an empty item is an error naming the option.
std::vector<std::string> split_list(const std::string& s, const std::string& option) {
  TORCH_CHECK(!s.empty(), option, ": the list is empty");
  std::vector<std::string> out;
  size_t begin = 0;
  while (true) {
    const size_t end = s.find(',', begin);
    out.push_back(s.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    TORCH_CHECK(!out.back().empty(), option, ": item ", out.size(), " of '", s, "' is empty");
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return out;
}

// --out as given; a resumed run writes into the directory it resumes.
std::string given_out_dir(const CLI::App& app, const CliOptions& o) {
  if (app.count("--out") > 0 && o.out_dir.empty()) refuse("--out: the output directory must not be empty");
  if (app.count("--resume") == 0) return o.out_dir;
  if (o.resume_dir.empty()) refuse("--resume: the directory must not be empty");
  if (!o.out_dir.empty() && std::filesystem::path(o.out_dir).lexically_normal() !=
                                std::filesystem::path(o.resume_dir).lexically_normal())
    refuse("--out '" + o.out_dir + "' and --resume '" + o.resume_dir +
           "' differ: a resumed run writes into the directory it resumes");
  return o.resume_dir;
}

// Every setting is validated here, before any data is read or file written: each
// spec's optimizer is built once on a probe parameter.
void add_run_specs(const CLI::App& app, const CliOptions& o, Invocation& inv) {
  inv.optimizers =
      app.count("--compare") > 0 ? split_list(o.compare, "--compare") : std::vector<std::string>{o.optimizer};
  for (const auto& item : inv.optimizers) {
    inv.specs.push_back(parse_run_spec(item, o.cfg));
    auto probe = torch::zeros({1}, torch::requires_grad());
    make_optimizer(inv.specs.back().optimizer, {probe}, o.cfg);
  }
}

// Across processes: --batch-size is the global batch, split evenly over the ranks.
void check_world(const CliOptions& o, const Invocation& inv) {
  const int w = inv.world.size();
  if (w == 1) return;
  if (o.cfg.batch_size % w != 0)
    refuse(fmt::format(
        "--batch-size {} is the global batch and must divide by the {} processes (WORLD_SIZE={}): "
        "use a multiple of {}",
        o.cfg.batch_size, w, w, w));
}

torch::Device training_device(const std::string& device) {
  if (device == "cuda" || (device == "auto" && torch::cuda::is_available())) {
    if (!torch::cuda::is_available()) refuse("--device cuda: no CUDA device is available");
    return torch::Device(torch::kCUDA);
  }
  return torch::Device(torch::kCPU);
}

// The header of the checkpoint to resume; a fresh run refuses a directory that holds one.
void open_checkpoint(const CliOptions& o, Invocation& inv, const std::string& checkpoint_copy) {
  inv.checkpoint = (std::filesystem::path(inv.out_dir) / "checkpoint.pt").string();
  if (!o.resume_dir.empty()) {
    inv.resume_from = checkpoint_copy.empty() ? inv.checkpoint : checkpoint_copy;
    inv.resumed = read_header(inv.resume_from);
  } else if (inv.world.root() && std::filesystem::exists(inv.checkpoint)) {
    refuse("'" + inv.out_dir + "' holds the checkpoint of an unfinished run: continue it with --resume " +
           inv.out_dir + ", or remove " + inv.checkpoint);
  }
}

std::string data_fingerprint(const sgdx::data::TensorDataset& split) {
  return content_hash(split.inputs()) + "-" + content_hash(split.targets());
}

}  // namespace

TempFile::~TempFile() {
  std::error_code ec;
  if (!path.empty()) std::filesystem::remove(path, ec);
}

std::shared_ptr<TempFile> share_checkpoint(const World& world, const std::string& resume_dir) {
  if (!world.multi()) return nullptr;
  std::string bytes;
  int64_t size = -1;  // -1: nothing to send (no --resume, or no readable checkpoint: the checks say why)
  if (world.root() && !resume_dir.empty()) {
    std::ifstream in(std::filesystem::path(resume_dir) / "checkpoint.pt", std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in && !bytes.empty()) size = static_cast<int64_t>(bytes.size());
  }
  std::vector<at::Tensor> header = {at::full({1}, size, at::kLong)};
  world.comm().broadcast(header, 0);
  size = header[0].item<int64_t>();
  if (size < 0) return nullptr;
  std::vector<at::Tensor> data = {world.root() ? at::from_blob(bytes.data(), {size}, at::kByte).clone()
                                               : at::empty({size}, at::kByte)};
  world.comm().broadcast(data, 0);
  if (world.root()) return nullptr;
  auto copy = std::make_shared<TempFile>();
  copy->path = (std::filesystem::temp_directory_path() /
                fmt::format("sgdx-train-resume-{}-rank{}.pt", ::getpid(), world.rank()))
                   .string();
  const auto received = data[0].contiguous();
  write_atomically(copy->path, std::string(static_cast<const char*>(received.data_ptr()), size));
  return copy;
}

Invocation resolve_invocation(const CLI::App& app, CliOptions& o, const World& world,
                              const std::string& checkpoint_copy) {
  Invocation inv;
  inv.world = world;
  inv.out_dir = given_out_dir(app, o);
  if (o.lr >= 0) o.cfg.lr = o.lr;
  o.cfg.progress = !o.no_progress && world.root();
  // CIFAR-10 is trained as practitioners train it: augmented, with a validation split.
  const bool cifar = o.cfg.dataset == "cifar10";
  o.cfg.augment = o.augment || (cifar && !o.no_augment);
  o.cfg.validation = o.validation >= 0 ? o.validation : (cifar ? 5000 : 0);
  if (o.cfg.augment && o.cfg.dataset == "teacher")
    refuse("--augment: the teacher dataset has vectors, not images, so there is nothing to crop or flip");
  add_run_specs(app, o, inv);
  check_world(o, inv);
  if (o.threads > 0) torch::set_num_threads(o.threads);
  // Across processes the collectives run on Gloo, over CPU tensors: auto means the CPU there.
  inv.device = training_device(world.multi() && o.cfg.device == "auto" ? "cpu" : o.cfg.device);
  if (world.multi() && inv.device.is_cuda())
    refuse(
        fmt::format("--device cuda: sgdx-train trains on the CPU across processes (WORLD_SIZE={}; its "
                    "collectives run on Gloo): use --device cpu or auto, or one process",
                    world.size()));
  if (inv.out_dir.empty()) inv.out_dir = fmt::format("runs/{}-{}", o.cfg.dataset, o.cfg.model);
  // Rank 0 alone writes: the other ranks need no output directory (a resume reads its checkpoint).
  if (const auto problem = sgdx_examples::output_directory_problem(inv.out_dir);
      world.root() && !problem.empty())
    refuse("output directory: " + problem);
  open_checkpoint(o, inv, checkpoint_copy);
  return inv;
}

sgdx::data::DatasetSplits load_training_data(const TrainConfig& cfg) {
  auto data = sgdx::data::load_dataset(cfg.dataset, cfg.data_dir);
  // Held out first (seed 0, the same for every run): a long-tailed set is built from the rest,
  // so the validation split stays balanced like the test set.
  sgdx::data::hold_out_validation(data, cfg.validation, 0);
  if (cfg.imbalance > 1) {
    // The same long-tailed subset for every run (its own seed, 0).
    auto idx = sgdx::data::long_tailed_indices(data.train.targets(), cfg.imbalance, 0);
    data.train = sgdx::data::TensorDataset(data.train.inputs().index_select(0, idx),
                                           data.train.targets().index_select(0, idx));
  }
  return data;
}

std::string test_set_note(const sgdx::data::DatasetSplits& data) {
  constexpr int64_t kCifar10Test = 10000;
  const int64_t n = data.test.inputs().size(0);
  if (data.name != "cifar10" || n >= kCifar10Test) return "";
  return fmt::format("test figures: the first {} of the {} CIFAR-10 test images", n, kCifar10Test);
}

nlohmann::json run_config(const CliOptions& o, const Invocation& inv, const sgdx::data::DatasetSplits& data) {
  const auto& cfg = o.cfg;
  const int64_t n = data.train.inputs().size(0);
  nlohmann::json config = {
      {"dataset", cfg.dataset},
      {"model", cfg.model},
      {"device", inv.device.str()},
      {"batch_size", cfg.batch_size},
      {"epochs", cfg.epochs},
      {"seed", o.seed},
      {"seeds", o.seeds},
      {"optimizers", inv.optimizers},
      {"momentum", cfg.momentum},
      {"weight_decay", cfg.weight_decay},
      {"schedule", cfg.schedule},
      {"imbalance", cfg.imbalance},
      {"balance", cfg.balance},
      {"tau", cfg.tau},
      {"sampling", cfg.sampling},
      {"presample", cfg.presample},
      {"mix", cfg.mix},
      {"score_beta", cfg.score_beta},
      {"train_examples", cfg.train_subset > 0 ? std::min<int64_t>(cfg.train_subset, n) : n},
      {"validation_examples", cfg.validation},
      {"augment", cfg.augment},
      {"threads", torch::get_num_threads()},
      {"fused_cuda", cfg.fused_cuda},
      {"amp", cfg.amp},
      {"rsgd",
       {{"gamma", cfg.rsgd_gamma},
        {"gamma0", cfg.rsgd_gamma0},
        {"max_prob", cfg.rsgd_max_prob},
        {"granularity", cfg.rsgd_granularity},
        {"memory", cfg.rsgd_memory}}},
      {"gradqueue",
       {{"clusters", cfg.clusters},
        {"granularity", cfg.gq_granularity},
        {"scope", cfg.gq_scope},
        {"path", cfg.gq_path},
        {"storage", cfg.gq_storage}}},
      {"data", {{"train", data_fingerprint(data.train)}, {"test", data_fingerprint(data.test)}}}};
  if (data.validation) config["data"]["validation"] = data_fingerprint(*data.validation);
  nlohmann::json lrs;
  for (const auto& spec : inv.specs) lrs[spec.label] = cfg.lr.value_or(default_lr(spec.optimizer));
  config["lr"] = lrs;
  if (inv.world.multi()) config["world_size"] = inv.world.size();  // one process's files stay as they were
  return config;
}

void check_same_config(const World& world, const nlohmann::json& config) {
  if (!world.multi()) return;
  // The thread count may differ between ranks; anything else would train different runs.
  auto mine = config;
  mine.erase("threads");
  const auto text = mine.dump();
  const auto hash = static_cast<int64_t>(sgdx_examples::fnv1a(text.data(), text.size()) >> 1);
  std::vector<at::Tensor> root = {at::full({1}, hash, at::kLong)};
  world.comm().broadcast(root, 0);
  world.together([&] {
    if (root[0].item<int64_t>() != hash)
      refuse(
          fmt::format("rank {}'s options or data differ from rank 0's (the config of metrics.json): start "
                      "every rank with the same command line and the same dataset",
                      world.rank()));
  });
}

StartPoint start_point(const Invocation& inv, const nlohmann::json& config, int seeds) {
  if (!inv.resumed) return {};
  // Anything but the run that wrote the checkpoint is refused here, before a file
  // changes. The thread count only changes the bits.
  const auto& saved = inv.resumed->config;
  const auto diff = config_differences(saved, config, {"threads", "world_size"});
  if (!diff.empty()) refuse("checkpoint '" + inv.checkpoint + "' is from a different run: " + diff);
  const int saved_world = saved.value("world_size", 1);
  if (saved_world != inv.world.size() && inv.world.root()) {
    // Every rank's state is one process's state (world.h): any world size continues it.
    std::fprintf(stderr,
                 "sgdx-train: note: resuming with %d process(es) where the checkpoint was written by %d: the "
                 "results are valid but not bit-identical to an uninterrupted run\n",
                 inv.world.size(), saved_world);
  }
  if (saved.value("threads", 0) != torch::get_num_threads() && inv.world.root()) {
    std::fprintf(stderr,
                 "sgdx-train: note: resuming with %d threads where the checkpoint used %d: the results "
                 "are valid but not bit-identical to an uninterrupted run\n",
                 torch::get_num_threads(), saved.value("threads", 0));
  }
  StartPoint start{inv.resumed->finished, inv.resumed->next_run};
  const auto runs = inv.specs.size() * seeds;
  if (start.first_run < 0 || start.first_run >= static_cast<int64_t>(runs))
    refuse(fmt::format("checkpoint '{}' names run {} of {}", inv.checkpoint, start.first_run, runs));
  return start;
}

void announce(const Invocation& inv, const CliOptions& o, const sgdx::data::DatasetSplits& data,
              const nlohmann::json& config, const StartPoint& start) {
  const auto& cfg = o.cfg;
  if (!inv.world.root()) return;
  std::filesystem::create_directories(inv.out_dir);
  remove_stale_temporaries(inv.out_dir);
  const auto runs = inv.specs.size() * o.seeds;
  const auto& w = inv.world;
  fmt::print(
      "sgdx-train: {} / {} on {} ({} train, {}{} test examples{}), batch {}, {} epochs, {} seed(s){}{}\n",
      cfg.dataset, cfg.model, inv.device.str(), config["train_examples"].get<int64_t>(),
      data.validation ? fmt::format("{} validation, ", data.validation->inputs().size(0)) : "",
      data.test.inputs().size(0), cfg.augment ? ", augmented: crop and flip" : "", cfg.batch_size, cfg.epochs,
      o.seeds,
      w.multi()
          ? fmt::format(", {} processes ({} examples each per batch)", w.size(), cfg.batch_size / w.size())
          : "",
      inv.resumed ? fmt::format(", resumed at run {} of {}", start.first_run + 1, runs) : "");
  if (const auto note = test_set_note(data); !note.empty()) fmt::print("{}\n", note);
  std::vector<double> summarised;  // once per temperature
  for (const auto& spec : inv.specs) {
    if (spec.balance == "none" || std::count(summarised.begin(), summarised.end(), spec.tau)) continue;
    summarised.push_back(spec.tau);
    fmt::print("training class sizes and temperature-{} sampling\n{}", spec.tau,
               sgdx::data::temperature_summary(
                   sgdx::data::group_sizes(data.train.targets(), data.num_classes), spec.tau));
  }
}

}  // namespace sgdx_train

#include "trainer.h"

#include <fmt/core.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include "sgdx/models/models.h"
#include "sgdx/optim/rsgd.h"

namespace sgdx_train {

const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> names = {"sgd", "sgdm", "nesterov", "adam", "rsgd"};
  return names;
}

double default_lr(const std::string& optimizer) {
  if (optimizer == "sgd") return 0.1;
  if (optimizer == "adam") return 1e-3;
  return 0.01;  // sgdm, nesterov, rsgd: momentum-like methods
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
  TORCH_CHECK(false, "unknown optimizer '", name, "' (choose one of sgd, sgdm, nesterov, adam, rsgd)");
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

std::pair<double, double> evaluate(sgdx::models::Classifier& model, const sgdx::data::TensorDataset& test,
                                   const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model.eval();
  const int64_t n = test.inputs().size(0);
  double loss = 0, correct = 0;
  for (int64_t i = 0; i < n; i += 1000) {
    const int64_t len = std::min<int64_t>(1000, n - i);
    auto x = test.inputs().narrow(0, i, len).to(device);
    auto y = test.targets().narrow(0, i, len).to(device);
    auto logits = model.forward(x);
    loss += torch::nn::functional::cross_entropy(logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum)).item<double>();
    correct += logits.argmax(1).eq(y).sum().item<double>();
  }
  model.train();
  return {loss / double(n), correct / double(n)};
}

}  // namespace

RunResult train_one(const sgdx::data::DatasetSplits& data, const std::string& optimizer_name, int64_t seed,
                    const TrainConfig& cfg, const torch::Device& device) {
  torch::manual_seed(static_cast<uint64_t>(seed));
  auto model = sgdx::models::make_model(cfg.model, data.input_shape, data.num_classes);
  model->to(device);
  auto optimizer = make_optimizer(optimizer_name, model->parameters(), cfg);
  if (auto* r = dynamic_cast<sgdx::optim::RSGD*>(optimizer.get())) {
    for (auto& g : r->param_groups()) static_cast<sgdx::optim::RSGDOptions&>(g.options()).seed(static_cast<uint64_t>(seed));
  }

  auto train = data.train;
  if (cfg.train_subset > 0 && cfg.train_subset < train.inputs().size(0)) {
    train = sgdx::data::TensorDataset(train.inputs().narrow(0, 0, cfg.train_subset),
                                      train.targets().narrow(0, 0, cfg.train_subset));
  }
  const int64_t n = train.inputs().size(0);
  const int64_t batches = (n + cfg.batch_size - 1) / cfg.batch_size;
  const int64_t total_steps = batches * cfg.epochs;
  const double base_lr = cfg.lr.value_or(default_lr(optimizer_name));
  auto loader = torch::data::make_data_loader(
      train, torch::data::samplers::RandomSampler(static_cast<size_t>(n)),
      torch::data::DataLoaderOptions(static_cast<size_t>(cfg.batch_size)).workers(0));

  RunResult result{optimizer_name, seed, {}};
  Progress progress(cfg.progress, fmt::format("[{} seed {}]", optimizer_name, seed));
  double seconds = 0;
  int64_t step = 0;
  for (int epoch = 1; epoch <= cfg.epochs; ++epoch) {
    double loss_sum = 0;
    int64_t seen = 0, batch_index = 0;
    auto start = std::chrono::steady_clock::now();
    for (auto& batch : *loader) {
      if (cfg.schedule == "cosine") {
        const double lr = 0.5 * base_lr * (1 + std::cos(M_PI * double(step) / double(total_steps)));
        for (auto& g : optimizer->param_groups()) g.options().set_lr(lr);
      }
      auto x = batch.data.to(device);
      auto y = batch.target.to(device);
      optimizer->zero_grad();
      auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
      loss.backward();
      optimizer->step();
      ++step;
      const double l = loss.item<double>();
      TORCH_CHECK(std::isfinite(l), "training diverged: loss is ", l, " at step ", step, " (", optimizer_name,
                  ", lr ", base_lr, "); lower --lr");
      loss_sum += l * double(x.size(0));
      seen += x.size(0);
      ++batch_index;
      const double now = seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress.update(epoch, cfg.epochs, batch_index, batches, loss_sum / double(seen), now);
    }
    if (device.is_cuda()) torch::cuda::synchronize();
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto [test_loss, test_acc] = evaluate(*model, data.test, device);
    EpochMetrics m{epoch, step, loss_sum / double(std::max<int64_t>(seen, 1)), test_loss, test_acc, seconds};
    result.epochs.push_back(m);
    progress.epoch_done(m, cfg.epochs);
  }
  return result;
}

}  // namespace sgdx_train

// sgdx-train's optimizers and run specifications: names, defaults, checks.
#include <torch/torch.h>

#include <cmath>

#include "sgdx/optim/gradqueue.h"
#include "sgdx/optim/rsgd.h"
#include "sgdx/optim/svrg.h"
#include "trainer.h"

namespace sgdx_train {
const std::vector<std::string>& optimizer_names() {
  static const std::vector<std::string> names = {"sgd", "sgdm", "nesterov", "adam", "rsgd", "svrg", "gqsgdm"};
  return names;
}

double default_lr(const std::string& optimizer) {
  if (optimizer == "sgd") return 0.1;
  if (optimizer == "adam") return 1e-3;
  return 0.01;  // sgdm, nesterov, rsgd, gqsgdm: momentum-like methods
}

namespace {

std::unique_ptr<torch::optim::Optimizer> make_rsgd(const std::vector<torch::Tensor>& params, double lr,
                                                   const TrainConfig& cfg) {
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

std::unique_ptr<torch::optim::Optimizer> make_gqsgdm(const std::vector<torch::Tensor>& params, double lr,
                                                     const TrainConfig& cfg) {
  namespace so = sgdx::optim;
  TORCH_CHECK(cfg.momentum >= 0 && cfg.momentum < 1, "momentum must be in [0, 1), got ", cfg.momentum);
  TORCH_CHECK(cfg.gq_granularity == "element" || cfg.gq_granularity == "tensor",
              "gq granularity must be element or tensor, got '", cfg.gq_granularity, "'");
  TORCH_CHECK(cfg.gq_scope == "per-tensor" || cfg.gq_scope == "global",
              "gq scope must be per-tensor or global, got '", cfg.gq_scope, "'");
  TORCH_CHECK(cfg.gq_storage == "exact" || cfg.gq_storage == "ema", "gq storage must be exact or ema, got '",
              cfg.gq_storage, "'");
  TORCH_CHECK(cfg.gq_path == "fast" || cfg.gq_path == "reference", "gq path must be fast or reference, got '",
              cfg.gq_path, "'");
  TORCH_CHECK(cfg.clusters >= 1, "--clusters must be >= 1, got ", cfg.clusters);
  auto opts =
      so::GradQueueSGDMOptions(lr)
          .momentum(cfg.momentum)
          .weight_decay(cfg.weight_decay)
          .granularity(cfg.gq_granularity == "tensor" ? so::GradQueueGranularity::tensor
                                                      : so::GradQueueGranularity::element)
          .scope(cfg.gq_scope == "global" ? so::GradQueueScope::global : so::GradQueueScope::per_tensor)
          .storage(cfg.gq_storage == "ema" ? so::GradQueueStorage::ema : so::GradQueueStorage::exact)
          .clusters(cfg.clusters);
  return std::make_unique<so::GradQueueSGDM>(params, opts);
}

// optimizer[@balance[:tau]][+sampling] (`item`: without +sampling); what it leaves out
// comes from the config.
RunSpec split_item(const std::string& item_in, const std::string& item, const TrainConfig& cfg) {
  RunSpec spec{item_in, item_in, cfg.balance, cfg.tau, cfg.sampling};
  const auto plus = item_in.find('+');
  if (plus != std::string::npos) {
    spec.sampling = item_in.substr(plus + 1);
    spec.optimizer = item;
  }
  const auto at = item.find('@');
  if (at == std::string::npos) return spec;
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
  return spec;
}

// gqsgdm-kN is GradQueue-SGDM with N clusters, plain gqsgdm has --clusters (named in
// its label when > 1), every other optimizer one.
void resolve_clusters(RunSpec& spec, const std::string& item_in, const TrainConfig& cfg) {
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
    TORCH_CHECK(k >= 1, "'", item_in, "': the cluster count of gqsgdm-kN must be an integer >= 1, got '",
                k_text, "'");
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
}

// Known names, and no two modes that cannot run together.
void check_modes(const RunSpec& spec, const std::string& item_in, const std::string& item) {
  const auto& known = optimizer_names();
  TORCH_CHECK(std::find(known.begin(), known.end(), spec.optimizer) != known.end(), "unknown optimizer '",
              spec.optimizer, "' (choose one of sgd, sgdm, nesterov, adam, rsgd, svrg, gqsgdm, gqsgdm-kN)");
  TORCH_CHECK(
      spec.clusters == 1 || (spec.sampling == "uniform" && spec.balance == "none"), "'", item_in,
      "': the clustered GradQueue step cannot be combined with importance sampling or class balancing");
  TORCH_CHECK(spec.balance == "none" || spec.balance == "ts" || spec.balance == "scalarize" ||
                  spec.balance == "cooldown",
              "unknown balance '", spec.balance, "' in '", item,
              "' (choose none, ts, scalarize or cooldown)");
  TORCH_CHECK(spec.tau > 0 && std::isfinite(spec.tau), "tau must be > 0, got ", spec.tau, " in '", item, "'");
  TORCH_CHECK(spec.sampling == "uniform" || spec.sampling == "loss" || spec.sampling == "upper-bound" ||
                  spec.sampling == "exact",
              "unknown sampling '", spec.sampling, "' in '", item_in,
              "' (choose uniform, loss, upper-bound or exact)");
  TORCH_CHECK(spec.sampling == "uniform" || spec.balance == "none", "'", item_in,
              "': importance sampling and class balancing cannot be combined");
}

void check_presample(const RunSpec& spec, const std::string& item_in, const TrainConfig& cfg) {
  int64_t presample_size = 0;
  TORCH_CHECK(cfg.presample == 0 || cfg.presample >= 2, "--presample must be 0 (off) or a ratio >= 2, got ",
              cfg.presample);
  TORCH_CHECK(!__builtin_mul_overflow(cfg.presample, cfg.batch_size, &presample_size) &&
                  presample_size <= (int64_t{1} << 40),
              "--presample ", cfg.presample, " times --batch-size ", cfg.batch_size,
              " is too large a presample batch");
  TORCH_CHECK(!(spec.sampling == "exact" && cfg.presample > 0), "'", item_in,
              "': presampling scores with a forward pass only; use loss or upper-bound with --presample");
}

// --amp covers the forward / backward / step loop; these paths run their own backward.
void check_amp(const RunSpec& spec, const std::string& item_in, const TrainConfig& cfg) {
  TORCH_CHECK(cfg.amp == "none" || cfg.amp == "bf16" || cfg.amp == "fp16", "unknown --amp '", cfg.amp,
              "' (choose none, bf16 or fp16)");
  if (cfg.amp == "none") return;
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

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        const std::vector<torch::Tensor>& params,
                                                        const TrainConfig& cfg) {
  const double lr = cfg.lr.value_or(default_lr(name));
  namespace o = torch::optim;
  if (name == "sgd")
    return std::make_unique<o::SGD>(params, o::SGDOptions(lr).weight_decay(cfg.weight_decay));
  if (name == "sgdm" || name == "nesterov") {
    TORCH_CHECK(cfg.momentum > 0 && cfg.momentum < 1, "momentum must be in (0, 1), got ", cfg.momentum);
    return std::make_unique<o::SGD>(
        params,
        o::SGDOptions(lr).momentum(cfg.momentum).nesterov(name == "nesterov").weight_decay(cfg.weight_decay));
  }
  if (name == "adam")
    return std::make_unique<o::Adam>(params, o::AdamOptions(lr).weight_decay(cfg.weight_decay));
  if (name == "rsgd") return make_rsgd(params, lr, cfg);
  if (name == "svrg") {
    // n and b are set by the trainer (train_one); these are placeholders for validation.
    return std::make_unique<sgdx::optim::SVRG>(params,
                                               sgdx::optim::SVRGOptions(lr).n(1).b(1).l2(cfg.weight_decay));
  }
  if (name == "gqsgdm") return make_gqsgdm(params, lr, cfg);
  TORCH_CHECK(false, "unknown optimizer '", name,
              "' (choose one of sgd, sgdm, nesterov, adam, rsgd, svrg, gqsgdm)");
}

RunSpec parse_run_spec(const std::string& item_in, const TrainConfig& cfg) {
  const std::string item = item_in.substr(0, item_in.find('+'));
  RunSpec spec = split_item(item_in, item, cfg);
  resolve_clusters(spec, item_in, cfg);
  check_modes(spec, item_in, item);
  check_presample(spec, item_in, cfg);
  check_amp(spec, item_in, cfg);
  return spec;
}
}  // namespace sgdx_train

#pragma once
// Dynamic loss scaling for mixed-precision training: PyTorch's
// torch.amp.GradScaler, which LibTorch lacks (it has autocast only). The loss is
// multiplied by S before backward so that small float16 gradients do not flush
// to zero; before the step the gradients are divided by S, and a step whose
// gradients hold inf/nan is skipped. After each iteration (update()):
//   inf/nan found:                   S *= backoff_factor, tracker = 0
//   growth_interval clean steps:     S *= growth_factor (if finite), tracker = 0
// The usual iteration, as in PyTorch:
//   scaler.scale(loss).backward();
//   scaler.unscale_(opt);  // optional: only to inspect or clip the true gradients
//   scaler.step(opt);
//   scaler.update();
// Optimizers that implement sgdx::optim::AmpScaledStep (sgdx's own) get the
// scale and the inf flag and unscale/skip inside their step (no host read by the
// scaler); any other optimizer is unscaled here and skipped on the host.
#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::dist {
class Communicator;
}

namespace sgdx::amp {

struct SGDX_API GradScalerOptions {
  TORCH_ARG(double, init_scale) = 65536.0;  // 2^16
  TORCH_ARG(double, growth_factor) = 2.0;
  TORCH_ARG(double, backoff_factor) = 0.5;
  TORCH_ARG(int64_t, growth_interval) = 2000;
  /// false: every method passes through (scale() returns the loss, step() is optimizer.step()).
  TORCH_ARG(bool, enabled) = true;

 public:
  /// Throws c10::Error naming the first invalid option and its value.
  void validate() const;
  friend SGDX_API bool operator==(const GradScalerOptions& lhs, const GradScalerOptions& rhs);
};

class SGDX_API GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  /// loss * S. The first call creates S (float32) and the growth tracker on the loss's device.
  torch::Tensor scale(const torch::Tensor& loss);

  /// Divides the optimizer's gradients by S in place (one
  /// _amp_foreach_non_finite_check_and_unscale_ per device and dtype) and records
  /// per device whether any is inf/nan. At most once per optimizer between update()s.
  void unscale_(torch::optim::Optimizer& optimizer);

  /// Steps unless the gradients in .grad hold inf/nan (the check is on what is
  /// there before the step); returns the step's loss (undefined when skipped).
  /// An AmpScaledStep optimizer gets S (none after unscale_()) and the flag and
  /// skips or divides itself. It may take a closure: closures that run a backward
  /// scale their loss with scale() and, when unscale_() was not called, the
  /// optimizer divides what they compute. Other optimizers take no closure, as
  /// in PyTorch (their closure's gradients would stay scaled).
  torch::Tensor step(torch::optim::Optimizer& optimizer,
                     torch::optim::Optimizer::LossClosure closure = nullptr);

  /// Adjusts S from the inf/nan flags of every optimizer stepped since the last
  /// update() (all devices summed; one _amp_update_scale_, no host read).
  void update();
  /// Sets S to `new_scale` instead (the growth tracker is kept, as in PyTorch).
  void update(double new_scale);

  /// S as a number (a device read), 1 when disabled; init_scale before the first scale().
  double get_scale() const;
  int64_t get_growth_tracker() const;
  bool is_enabled() const { return options_.enabled(); }
  const GradScalerOptions& options() const { return options_; }
  /// The group the inf/nan flags are agreed over; null (the default): one process.
  void set_communicator(std::shared_ptr<dist::Communicator> comm) { comm_ = std::move(comm); }
  const std::shared_ptr<dist::Communicator>& communicator() const { return comm_; }

  /// S, the growth tracker and the options. load() keeps this scaler's `enabled`
  /// (it says how this run trains) and S's device when S exists; otherwise S is
  /// created with the loaded value on the next scale()'s device.
  void save(torch::serialize::OutputArchive& archive) const;
  void load(torch::serialize::InputArchive& archive);

 private:
  enum class Stage { ready, unscaled, stepped };
  struct OptimizerState {
    Stage stage = Stage::ready;
    std::vector<std::pair<c10::Device, at::Tensor>> found_inf_per_device;
  };

  void check_scale(const char* caller) const;
  /// Multiplies every gradient by `inv_scale` and fills found_inf_per_device (an
  /// inv_scale of 1 only checks: the kernel leaves the values as they are).
  void unscale_grads_(torch::optim::Optimizer& optimizer, const at::Tensor& inv_scale, bool allow_fp16,
                      const char* caller, OptimizerState& state) const;
  /// The sum of the recorded flags on S's device.
  at::Tensor found_inf_sum(const OptimizerState& state) const;

  GradScalerOptions options_;
  at::Tensor scale_;           // float32 scalar, undefined until the first scale()
  at::Tensor growth_tracker_;  // int32 scalar on scale_'s device
  double pending_scale_;       // what scale_ starts from: init_scale, or a loaded value
  int64_t pending_tracker_ = 0;
  std::map<const torch::optim::Optimizer*, OptimizerState> per_optimizer_;
  std::shared_ptr<dist::Communicator> comm_;
};

}  // namespace sgdx::amp

// The GradQueue-SGDM step's entries: operand checks, the dtypes of the window
// statistics, the dispatch to the fused CPU kernel (gradqueue_step_cpu.cpp) and the ATen
// composition every other device and dtype takes.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/irange.h>

#include <utility>
#include <vector>

#include "gradqueue_step_internal.h"
#include "sgdx/config.h"
#include "sgdx/ops/gradqueue_step.h"

namespace sgdx::ops {
namespace {
// Operand checks shared by every path of one tensor.
void check_operands(const GradQueueTensor& t, const GradQueueStepConfig& c) {
  const auto& p = t.param;
  TORCH_CHECK(p.defined() && t.grad.defined() && t.s1.defined() && t.s2.defined(),
              "gradqueue_step_: param, grad, s1 and s2 must be defined");
  TORCH_CHECK(at::isFloatingType(p.scalar_type()), "gradqueue_step_: parameters must be floating point, got ",
              p.scalar_type());
  const bool exact = t.ema_rate == 0.0;
  TORCH_CHECK(!exact || t.slot.defined(), "gradqueue_step_: exact storage needs the queue slot");
  TORCH_CHECK(c.momentum == 0.0 || t.momentum.defined(), "gradqueue_step_: momentum buffer is undefined");
  const auto stat_dtype = gradqueue_stats_dtype(p.scalar_type());
  for (const at::Tensor* x : {&t.grad, &t.momentum, &t.s1, &t.s2, &t.slot, &t.old, &t.direction}) {
    if (!x->defined()) continue;
    const bool stat = x == &t.s1 || x == &t.s2 || x == &t.slot || x == &t.old;
    const auto want = x == &t.s1 ? gradqueue_mean_dtype(p.scalar_type(), exact)
                      : stat     ? stat_dtype
                                 : p.scalar_type();
    TORCH_CHECK(x->device() == p.device() && x->scalar_type() == want,
                "gradqueue_step_: ", stat ? "window operand" : "operand", " on ", x->device(), " with dtype ",
                x->scalar_type(), " does not match the parameter (", p.device(), ", ", p.scalar_type(),
                "; expected dtype ", want, ")");
    TORCH_CHECK(x->numel() == p.numel() && x->is_contiguous(), "gradqueue_step_: operand of ", x->numel(),
                " elements (contiguous: ", x->is_contiguous(), ") for a parameter of ", p.numel());
  }
  TORCH_CHECK(p.is_contiguous(), "gradqueue_step_: the parameter must be contiguous");
  TORCH_CHECK(t.count >= 0, "gradqueue_step_: count must be >= 0, got ", t.count);
  TORCH_CHECK(!exact || !t.old.defined() || t.count >= 1,
              "gradqueue_step_: a row leaves the window but count is ", t.count);
  TORCH_CHECK(!exact || !t.scarcity || t.count >= 1,
              "gradqueue_step_: scarcity needs a non-empty window, count is ", t.count);
  TORCH_CHECK(exact || (t.ema_rate > 0.0 && t.ema_rate <= 1.0),
              "gradqueue_step_: ema_rate must be in (0, 1], got ", t.ema_rate);
}
}  // namespace

at::ScalarType gradqueue_stats_dtype(at::ScalarType param_dtype) {
  return at::promote_types(param_dtype, at::kFloat);
}

at::ScalarType gradqueue_mean_dtype(at::ScalarType param_dtype, bool exact_storage) {
  return exact_storage ? at::kDouble : gradqueue_stats_dtype(param_dtype);
}

at::Tensor gradqueue_step_(GradQueueTensor& t, const GradQueueStepConfig& c) {
  check_operands(t, c);
  const auto& p = t.param;
  if (p.device().is_cpu() && (p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble) &&
      !t.direction.defined()) {
    const double sum = detail::gradqueue_step_cpu(t, c);
    return at::scalar_tensor(sum, at::TensorOptions().dtype(at::kDouble));
  }
  return gradqueue_step_aten_(t, c);
}

// Written from the rule in sgdx/optim/gradqueue.h; the window statistics in
// Welford form (sgdx/detail/gradqueue_math.h states the layout). No host reads.
at::Tensor gradqueue_step_aten_(GradQueueTensor& t, const GradQueueStepConfig& c) {
  check_operands(t, c);
  c10::AutoGradMode no_grad(false);
  const auto p = t.param.view(-1);
  const auto dt = at::promote_types(p.scalar_type(), at::kFloat);  // opmath: fp32 for half/bf16
  const auto dopt = at::TensorOptions().dtype(at::kDouble).device(p.device());
  const auto theta = p.to(dt);
  const auto d = t.grad.view(-1).to(dt) + c.weight_decay * theta;
  auto s1 = t.s1.view(-1), s2 = t.s2.view(-1);
  const bool exact = t.ema_rate == 0.0;
  const auto mt =
      at::promote_types(s1.scalar_type(), dt);  // the mean's arithmetic: float64 for exact storage
  const auto mu = s1.to(mt), stat = s2.to(dt);
  const auto numel = static_cast<double>(p.numel());
  at::Tensor rho;
  at::Tensor rho_sum = at::full({}, numel, dopt);
  if (t.scarcity) {
    const auto var = (exact ? stat / static_cast<double>(t.count) : stat).clamp_min(0);
    const auto dev = (d.to(mt) - mu).to(dt);
    if (c.per_element) {
      const auto z = dev.abs() / (var.sqrt() + c.eps) / kGradQueueZRef;
      rho = (c.kappa == 1.0 ? z : z.pow(c.kappa)).clamp(c.rho_min, c.rho_max);
      rho_sum = rho.sum(at::kDouble);
    } else {
      const auto z = dev.square().sum(at::kDouble).sqrt() / (var.sum(at::kDouble).sqrt() + c.eps);
      const auto r = (c.kappa == 1.0 ? z : z.pow(c.kappa)).clamp(c.rho_min, c.rho_max);
      rho = r.to(dt);
      rho_sum = r * numel;
    }
  }
  const auto gh = t.direction.defined() ? t.direction.view(-1).to(dt) : (rho.defined() ? rho * d : d);
  if (exact) {
    at::Tensor mu_new, m2;
    const auto x = d.to(mt);
    if (t.old.defined()) {                   // n stays: x enters, o leaves
      const auto o = t.old.view(-1).to(mt);  // read before the slot (which it may be) is written
      mu_new = mu + (x - o) / static_cast<double>(t.count);
      m2 = stat.to(mt) + (x - o) * ((x - mu_new) + (o - mu));
    } else {  // n grows by one
      const auto dx = x - mu;
      mu_new = mu + dx / static_cast<double>(t.count + 1);
      m2 = stat.to(mt) + dx * (x - mu_new);
    }
    s1.copy_(mu_new);
    s2.copy_(m2.clamp_min(0));
    t.slot.view(-1).copy_(d);
  } else {
    const auto dx = d - mu;
    s1.copy_(mu + t.ema_rate * dx);
    s2.copy_((1.0 - t.ema_rate) * (stat + t.ema_rate * dx * dx));
  }
  auto u = gh;
  if (c.momentum != 0.0) {
    auto v = t.momentum.view(-1);
    const auto nv = t.first_step ? gh : c.momentum * v.to(dt) + (1.0 - c.dampening) * gh;
    v.copy_(nv);
    u = c.nesterov ? gh + c.momentum * nv : nv;
  }
  p.copy_(theta - c.lr * u);
  return rho_sum;
}

namespace detail {
void check_gradqueue_list(const std::vector<GradQueueTensor>& tensors, const GradQueueStepConfig& config,
                          const at::Tensor& grad_scale, const at::Tensor& found_inf, bool cuda) {
  if (tensors.empty()) return;
  const auto device = tensors[0].param.device();
  const auto dtype = tensors[0].param.scalar_type();
  TORCH_CHECK(!cuda || device.is_cuda(), "gradqueue_step_cuda_: tensors must be on a CUDA device, got ",
              device);
  for (const auto k : c10::irange(tensors.size())) {
    TORCH_CHECK(!cuda || !tensors[k].direction.defined(), "gradqueue_step_cuda_: tensor ", k,
                " has a direction; the CUDA kernel takes Delta-rho * d only (use gradqueue_step_aten_)");
  }
  for (const auto k : c10::irange(tensors.size())) {
    const auto& t = tensors[k];
    TORCH_CHECK(t.param.defined() && t.param.device() == device && t.param.scalar_type() == dtype,
                "gradqueue_step: tensor ", k, " is on ",
                t.param.defined() ? t.param.device() : c10::Device("cpu"), " with dtype ",
                t.param.defined() ? t.param.scalar_type() : at::ScalarType::Undefined,
                "; every tensor must be on ", device, " with dtype ", dtype);
    try {
      check_operands(t, config);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "gradqueue_step: tensor ", k, ": ", e.msg());
    }
  }
  for (const auto& [s, name] : {std::pair{&grad_scale, "grad_scale"}, std::pair{&found_inf, "found_inf"}}) {
    if (!s->defined()) continue;
    TORCH_CHECK(s->numel() == 1 && s->scalar_type() == at::kFloat && s->device() == device,
                "gradqueue_step: ", name, " must be one float32 value on ", device, ", got ", s->numel(), " ",
                s->scalar_type(), " value(s) on ", s->device());
  }
}
}  // namespace detail

#if !SGDX_WITH_CUDA
at::Tensor gradqueue_step_cuda_(std::vector<GradQueueTensor>&, const GradQueueStepConfig&, const at::Tensor&,
                                const at::Tensor&) {
  TORCH_CHECK(false, "gradqueue_step_cuda_: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
#endif

}  // namespace sgdx::ops

// Validation for the fused per-sample norm kernel (cuda/per_sample_norms.cu),
// compiled in every build so the errors are the same with and without CUDA.
#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include "sgdx/config.h"
#include "sgdx/ops/per_sample_cuda.h"

namespace sgdx::ops {
namespace detail {

namespace {
bool kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// T (positions per sample), K (inputs per group), P (outputs per group).
struct Dims {
  int64_t T, K, P;
};
Dims dims_of(const NormLayerOperands& l, int64_t batch) {
  const auto& d = l.grad_output;
  if (l.kind == NormLayerOperands::Kind::linear) {
    const int64_t rows = d.dim() == 3 ? d.size(0) * d.size(1) : d.size(0);
    const int64_t K = l.weight ? l.input.size(-1) : 0;
    return {batch > 0 ? rows / batch : 0, K, d.size(-1)};
  }
  const int64_t K = l.weight ? l.input.size(1) / l.groups * l.kernel_h * l.kernel_w : 0;
  return {d.size(2) * d.size(3), K, d.size(1) / l.groups};
}

// Every defined tensor of layer k: on one device (CUDA when `cuda`), strided, a kernel dtype.
void check_tensors(const NormLayerOperands& l, size_t k, bool cuda, c10::optional<at::Device>& device) {
  const auto& d = l.grad_output;
  const auto& a = l.input;
  for (const auto* t : {&d, &a}) {
    if (!t->defined()) continue;
    if (!device) device = t->device();
    TORCH_CHECK(!cuda || t->is_cuda(), "per_sample_sq_norms_cuda: layer ", k, " has a tensor on ",
                t->device(), "; the kernel needs CUDA tensors");
    TORCH_CHECK(t->device() == *device, "per_sample_sq_norms_cuda: layer ", k, " has a tensor on ",
                t->device(), ", another layer's is on ", *device);
    TORCH_CHECK(t->layout() == at::kStrided, "per_sample_sq_norms_cuda: layer ", k, " has a ", t->layout(),
                " tensor; the kernel needs strided (dense) tensors");
    TORCH_CHECK(kernel_dtype(t->scalar_type()), "per_sample_sq_norms_cuda: layer ", k, " has dtype ",
                t->scalar_type(), "; the kernel takes float32, float16 or bfloat16");
  }
  TORCH_CHECK(!a.defined() || !l.weight || a.scalar_type() == d.scalar_type(),
              "per_sample_sq_norms_cuda: layer ", k, " has input dtype ", a.scalar_type(),
              " but output-gradient dtype ", d.scalar_type());
}

void check_linear(const NormLayerOperands& l, size_t k, int64_t batch) {
  const auto& d = l.grad_output;
  const auto& a = l.input;
  TORCH_CHECK(d.dim() == 2 || d.dim() == 3, "per_sample_sq_norms_cuda: Linear layer ", k,
              " needs a 2-D or 3-D output gradient, got shape ", d.sizes());
  const int64_t rows = d.dim() == 3 ? d.size(0) * d.size(1) : d.size(0);
  const bool batch_first = d.dim() == 3 ? d.size(0) == batch : (batch > 0 ? rows % batch == 0 : rows == 0);
  TORCH_CHECK(batch_first, "per_sample_sq_norms_cuda: Linear layer ", k, " has output gradient of shape ",
              d.sizes(), ", which is not batch-first for batch ", batch);
  if (!l.weight) return;
  TORCH_CHECK(a.dim() == d.dim(), "per_sample_sq_norms_cuda: Linear layer ", k, " has input of shape ",
              a.sizes(), " and output gradient of shape ", d.sizes(), " (need the same number of dims)");
  const int64_t arows = a.dim() == 3 ? a.size(0) * a.size(1) : a.size(0);
  TORCH_CHECK(arows == rows, "per_sample_sq_norms_cuda: Linear layer ", k, " has ", arows, " input rows but ",
              rows, " output-gradient rows");
}

void check_conv2d(const NormLayerOperands& l, size_t k, int64_t batch) {
  const auto& d = l.grad_output;
  const auto& a = l.input;
  TORCH_CHECK(d.dim() == 4 && d.size(0) == batch, "per_sample_sq_norms_cuda: Conv2d layer ", k,
              " needs an output gradient [", batch, ", Cout, Ho, Wo], got shape ", d.sizes());
  TORCH_CHECK(l.groups >= 1 && l.kernel_h >= 1 && l.kernel_w >= 1 && l.stride_h >= 1 && l.stride_w >= 1 &&
                  l.dilation_h >= 1 && l.dilation_w >= 1 && l.pad_h >= 0 && l.pad_w >= 0,
              "per_sample_sq_norms_cuda: Conv2d layer ", k, " has invalid geometry (kernel ", l.kernel_h, "x",
              l.kernel_w, ", stride ", l.stride_h, "x", l.stride_w, ", padding ", l.pad_h, "x", l.pad_w,
              ", dilation ", l.dilation_h, "x", l.dilation_w, ", groups ", l.groups, ")");
  TORCH_CHECK(d.size(1) % l.groups == 0, "per_sample_sq_norms_cuda: Conv2d layer ", k, " has ", d.size(1),
              " output channels, not a multiple of groups = ", l.groups);
  if (!l.weight) return;
  TORCH_CHECK(a.dim() == 4 && a.size(0) == batch, "per_sample_sq_norms_cuda: Conv2d layer ", k,
              " needs an input [", batch, ", Cin, H, W], got shape ", a.sizes());
  TORCH_CHECK(a.size(1) % l.groups == 0, "per_sample_sq_norms_cuda: Conv2d layer ", k, " has ", a.size(1),
              " input channels, not a multiple of groups = ", l.groups);
  const int64_t ho = (a.size(2) + 2 * l.pad_h - l.dilation_h * (l.kernel_h - 1) - 1) / l.stride_h + 1;
  const int64_t wo = (a.size(3) + 2 * l.pad_w - l.dilation_w * (l.kernel_w - 1) - 1) / l.stride_w + 1;
  TORCH_CHECK(ho == d.size(2) && wo == d.size(3), "per_sample_sq_norms_cuda: Conv2d layer ", k, ": input ",
              a.sizes(), " with this geometry gives output ", ho, "x", wo, ", but the output gradient is ",
              d.size(2), "x", d.size(3));
}

}  // namespace

void check_norm_layers(const std::vector<NormLayerOperands>& layers, int64_t batch, bool cuda) {
  TORCH_CHECK(batch >= 0, "per_sample_sq_norms_cuda: batch must be >= 0, got ", batch);
  c10::optional<at::Device> device;
  for (const auto k : c10::irange(layers.size())) {
    const auto& l = layers[k];
    TORCH_CHECK(l.weight || l.bias, "per_sample_sq_norms_cuda: layer ", k,
                " includes neither weight nor bias");
    TORCH_CHECK(l.grad_output.defined(), "per_sample_sq_norms_cuda: layer ", k, " has no output gradient");
    TORCH_CHECK(!l.weight || l.input.defined(), "per_sample_sq_norms_cuda: layer ", k,
                " includes the weight but has no input");
    check_tensors(l, k, cuda, device);
    if (l.kind == NormLayerOperands::Kind::linear) {
      check_linear(l, k, batch);
    } else {
      check_conv2d(l, k, batch);
    }
    const auto dm = dims_of(l, batch);
    TORCH_CHECK(dm.T * std::max<int64_t>(dm.K, 1) < (int64_t{1} << 31) && dm.T * dm.P < (int64_t{1} << 31),
                "per_sample_sq_norms_cuda: layer ", k, " has ", dm.T,
                " positions per sample, too many for the kernel");
  }
}

NormRule weight_norm_rule(NormLayerOperands::Kind kind, int64_t T, int64_t K, int64_t P,
                          NormStrategy strategy) {
  if (kind == NormLayerOperands::Kind::linear && T == 1) return NormRule::outer_product;
  if (strategy == NormStrategy::ghost) return NormRule::ghost;
  if (strategy == NormStrategy::materialize) return NormRule::materialize;
  return 2 * T * T <= P * K ? NormRule::ghost : NormRule::materialize;
}

NormRule norm_rule(const NormLayerOperands& l, int64_t batch) {
  if (!l.weight) return NormRule::bias_only;
  const auto dm = dims_of(l, batch);
  return weight_norm_rule(l.kind, dm.T, dm.K, dm.P, l.strategy);
}

}  // namespace detail

#if !SGDX_WITH_CUDA
at::Tensor per_sample_sq_norms_cuda(const std::vector<NormLayerOperands>& layers, int64_t batch) {
  detail::check_norm_layers(layers, batch, /*cuda=*/true);
  TORCH_CHECK(false, "per_sample_sq_norms_cuda: sgdx was built without CUDA (SGDX_WITH_CUDA=OFF)");
}
#endif

}  // namespace sgdx::ops

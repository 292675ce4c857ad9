#pragma once
// Exact per-sample gradient norms, inner products and direction products for
// LibTorch models, without per-sample backward passes (Goodfellow 2015, "Efficient
// per-example gradient computations"; Li et al. 2022 "ghost norm"). LibTorch C++
// has no module hooks, so the capture reads the autograd graph of one forward:
// for each supported layer it keeps the layer's input (a saved variable of its
// backward node) and records the gradient of its output with a node pre-hook
// during the ordinary backward. The model's gradients are not changed.
//
// Per layer, per sample i (loss summed over the batch; mean is rescaled):
//   Linear   y_t = W a_t + b:  ||dW_i||^2 = <A_i A_i^T, D_i D_i^T>_F,  ||db_i||^2 = ||sum_t D_i[t]||^2
//   Conv2d   the same with A_i = unfold(x_i) per group, T = output positions
//   Embedding ||dE_i||^2 = sum_{t,t'} [idx_t = idx_t'] <d_t, d_t'>
//   LayerNorm / GroupNorm affine: dgamma_i = sum d (.) xhat, dbeta_i = sum d
//   BatchNorm in eval mode: the same, xhat = (x - running_mean) / sqrt(running_var + eps)
//
// Batch layout: every layer's input must be batch-first, and the capture
// refuses (c10::Error naming the layer and the shapes) what it cannot establish
// as such from the graph. A Linear layer multiplies its input flattened to
// [R, F]; its rows are accepted when R == B, or when the graph shows the shape
// they were flattened from (the view/reshape nodes, followed through
// elementwise activations and earlier Linear layers; without gradients, the
// view's base) and that shape has the batch first ([B, T, F], [1, B, F]).
// Refused: sequence-first [T, B, F]; shapes with another leading dim equal to B
// (T == B: the order cannot be told); rows from anything else (a 2-D [B*T, F]
// tensor handed over as is, a non-contiguous input without gradients, which
// matmul copies out of the graph's sight: call .contiguous() on it). A
// transpose of [T, B, F] to [B, T, F] is accepted, the graph recording the
// [B, T, F] copy. BatchNorm in training mode (or without running statistics)
// normalises with the batch's statistics, which couple the samples: refused.
//
// Each layer kind is one rule in src/ops/per_sample/, found by the autograd node
// type the layer's parameters feed; docs/per_sample_layers.md says how to add one.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::ops {

enum class LossReduction { mean, sum };

/// How a layer's weight norms are computed. automatic picks the cheaper of the
/// ghost (Gram) rule and forming the per-sample gradient (2T^2 vs p*d).
enum class NormStrategy { automatic, ghost, materialize };

/// Which implementation computes the norms (norms(), squared_norms(), layer_squared_norms()).
enum class PerSampleBackend {
  /// fused_cuda when every captured layer is on a CUDA device and a GPU run has
  /// verified the kernel (sgdx/ops/cuda_kernels.h), aten otherwise.
  automatic,
  /// ATen ops on the model's device, any dtype.
  aten,
  /// Linear and Conv2d layers through one launch of the fused CUDA kernel
  /// (per_sample_cuda.h; float32/float16/bfloat16 models on a CUDA device,
  /// float32 results), the other layers through ATen.
  fused_cuda,
};

struct PerSampleOptions {
  LossReduction reduction = LossReduction::mean;
  NormStrategy strategy = NormStrategy::automatic;
  /// Parameters (by name as in named_parameters()) left out of every result.
  std::vector<std::string> ignore;
  PerSampleBackend backend = PerSampleBackend::automatic;
};

/// One captured layer (src/ops/per_sample/captured_layer.h).
class CapturedLayer;

/// One layer rule of the capture: the layer kind and the autograd node types it
/// reads (a parameter feeding any other node is refused, naming its module).
struct PerSampleLayerRule {
  std::string layer;               ///< e.g. "Linear"
  std::vector<std::string> nodes;  ///< e.g. {"AddmmBackward0", "MmBackward0", "AddBackward0"}
};
/// The registered rules, in registration order.
SGDX_API std::vector<PerSampleLayerRule> per_sample_layer_rules();

/// Captures one forward+backward of `model` and answers per-sample questions
/// about it. Usage:
///   PerSampleGradients cap(*model);
///   auto loss = F::cross_entropy(model->forward(x), y);   // mean over B
///   cap.attach(loss, x.size(0));                            // before backward
///   loss.backward();                                        // ordinary gradients
///   at::Tensor n = cap.norms();                             // [B], ||grad l_i||
class SGDX_API PerSampleGradients {
 public:
  explicit PerSampleGradients(const torch::nn::Module& model, PerSampleOptions options = {});
  ~PerSampleGradients();
  PerSampleGradients(const PerSampleGradients&) = delete;
  PerSampleGradients& operator=(const PerSampleGradients&) = delete;

  /// Walks the autograd graph of `loss` (a scalar, before backward), finds every
  /// trainable parameter's layer, keeps its input and hooks its output gradient.
  /// Throws c10::Error naming the layer for BatchNorm in training mode, for an
  /// input whose batch dimension cannot be established (see the batch layout
  /// above) and for any layer with trainable parameters that is not supported
  /// (unless its parameters are ignored; a layer whose parameters the loss does
  /// not use is skipped, whatever its type). A Linear layer whose weight is left
  /// out and whose bias is added after matmul (non-contiguous input) has its
  /// layout checked from the captured output gradient, when results are first read.
  void attach(const at::Tensor& loss, int64_t batch_size);

  /// True once backward has run through every captured layer.
  bool ready() const;

  /// Per-sample total gradient norms ||grad_theta l_i||, [B] (float64 for float64 models).
  at::Tensor norms() const;
  /// Per-sample squared norms, [B].
  at::Tensor squared_norms() const;
  /// Per-layer squared norms, [layers, B], in the order of layer_names().
  at::Tensor layer_squared_norms() const;
  std::vector<std::string> layer_names() const;

  /// Gram matrix of the per-sample gradients of `subset` (indices into the
  /// batch): G[a][b] = <grad l_{s_a}, grad l_{s_b}>, [s, s].
  at::Tensor gram(const at::Tensor& subset) const;
  /// <grad l_i, direction> for every sample, [B]. `direction` holds one tensor
  /// per parameter of the model, in named_parameters() order (ignored and frozen
  /// parameters' entries are not read; undefined entries count as zero).
  at::Tensor dot(const std::vector<at::Tensor>& direction) const;

  /// Per-group sums of the per-sample gradients: for every parameter of the model
  /// (named_parameters() order) a tensor [groups, *shape] whose row k is
  /// sum_{i: assignment[i] = k} grad l_i; undefined for ignored and frozen
  /// parameters. Costs about one weight gradient per layer (Linear, Conv2d).
  std::vector<at::Tensor> group_sums(const at::Tensor& assignment, int64_t groups) const;
  /// The model's parameters in named_parameters() order.
  std::vector<at::Tensor> parameters() const;
  const PerSampleOptions& options() const { return options_; }
  int64_t batch_size() const { return batch_size_; }

  /// Per-sample gradients of one parameter, [B, *param.shape] (for tests and
  /// small models: this materialises them).
  at::Tensor per_sample_grad(const std::string& parameter_name) const;

 private:
  const torch::nn::Module& model_;
  PerSampleOptions options_;
  int64_t batch_size_ = 0;
  std::vector<std::unique_ptr<CapturedLayer>> layers_;
  std::vector<std::string> param_names_;  // named_parameters() order
  void check_ready() const;
  /// Per-sample gradients are the captured ones times this (B for a mean loss).
  double scale() const { return options_.reduction == LossReduction::mean ? double(batch_size_) : 1.0; }
};

}  // namespace sgdx::ops

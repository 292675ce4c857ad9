#pragma once
// The small models of the example trainer, benchmarks and tests. The
// ResNet-style net uses GroupNorm rather than BatchNorm so that per-sample
// gradients stay defined (BatchNorm couples the samples of a batch).
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::models {

/// A classifier: images or feature vectors in, logits [B, classes] out.
class SGDX_API Classifier : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  /// {logits, input of the last Linear layer} (the per-sample features that the
  /// clustered GradQueue step clusters on).
  virtual std::pair<torch::Tensor, torch::Tensor> forward_features(torch::Tensor x) = 0;
};

/// Flatten -> (Linear -> ReLU) per hidden width -> Linear.
class SGDX_API MLP : public Classifier {
 public:
  MLP(int64_t in_features, const std::vector<int64_t>& hidden, int64_t classes);
  torch::Tensor forward(torch::Tensor x) override;
  std::pair<torch::Tensor, torch::Tensor> forward_features(torch::Tensor x) override;

 private:
  torch::nn::Sequential net_;
};

/// Two 5x5 conv + ReLU + 2x2 max-pool stages (32, 64 channels), then 128 -> classes.
class SGDX_API SmallCNN : public Classifier {
 public:
  SmallCNN(int64_t channels, int64_t height, int64_t width, int64_t classes);
  torch::Tensor forward(torch::Tensor x) override;
  std::pair<torch::Tensor, torch::Tensor> forward_features(torch::Tensor x) override;

 private:
  torch::nn::Sequential features_, head_;
};

/// ResNet-style net for 32x32 (or 28x28) images: a 3x3 stem and three stages of
/// basic residual blocks (16, 32, 64 channels, stride 1, 2, 2) with GroupNorm,
/// global average pooling and a linear head. blocks_per_stage=1 is ResNet-8.
class SGDX_API ResNetCifar : public Classifier {
 public:
  ResNetCifar(int64_t channels, int64_t classes, int64_t blocks_per_stage = 1, int64_t width = 16);
  torch::Tensor forward(torch::Tensor x) override;
  std::pair<torch::Tensor, torch::Tensor> forward_features(torch::Tensor x) override;

 private:
  torch::nn::Sequential body_;
  torch::nn::Linear head_{nullptr};
};

/// Names accepted by make_model.
SGDX_API const std::vector<std::string>& model_names();

/// Builds "mlp", "cnn" or "resnet" for inputs of `input_shape` (one example).
SGDX_API std::shared_ptr<Classifier> make_model(const std::string& name,
                                                const std::vector<int64_t>& input_shape, int64_t classes);

}  // namespace sgdx::models

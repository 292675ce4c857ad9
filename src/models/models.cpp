#include "sgdx/models/models.h"

#include <torch/nn/functional.h>
#include <torch/nn/modules.h>

#include <algorithm>
#include <numeric>

namespace sgdx::models {

namespace nn = torch::nn;

MLP::MLP(int64_t in_features, const std::vector<int64_t>& hidden, int64_t classes) {
  TORCH_CHECK(in_features > 0 && classes > 0, "MLP: in_features and classes must be positive, got ",
              in_features, " and ", classes);
  int64_t width = in_features;
  for (const auto h : hidden) {
    TORCH_CHECK(h > 0, "MLP: hidden width must be positive, got ", h);
    net_->push_back(nn::Linear(width, h));
    net_->push_back(nn::ReLU());
    width = h;
  }
  net_->push_back(nn::Linear(width, classes));
  register_module("net", net_);
}

torch::Tensor MLP::forward(torch::Tensor x) {
  return net_->forward(x.flatten(1));
}

std::pair<torch::Tensor, torch::Tensor> MLP::forward_features(torch::Tensor x) {
  auto h = x.flatten(1);
  auto it = net_->begin();
  for (size_t i = 0; i + 1 < net_->size(); ++i, ++it) h = it->forward<torch::Tensor>(h);
  return {it->forward<torch::Tensor>(h), h};
}

SmallCNN::SmallCNN(int64_t channels, int64_t height, int64_t width, int64_t classes) {
  features_ = nn::Sequential(nn::Conv2d(nn::Conv2dOptions(channels, 32, 5).padding(2)), nn::ReLU(),
                             nn::MaxPool2d(2), nn::Conv2d(nn::Conv2dOptions(32, 64, 5).padding(2)),
                             nn::ReLU(), nn::MaxPool2d(2), nn::Flatten());
  const int64_t flat = 64 * (height / 4) * (width / 4);
  head_ = nn::Sequential(nn::Linear(flat, 128), nn::ReLU(), nn::Linear(128, classes));
  register_module("features", features_);
  register_module("head", head_);
}

torch::Tensor SmallCNN::forward(torch::Tensor x) {
  return head_->forward(features_->forward(x));
}

std::pair<torch::Tensor, torch::Tensor> SmallCNN::forward_features(torch::Tensor x) {
  auto h = features_->forward(x);
  auto it = head_->begin();
  for (size_t i = 0; i + 1 < head_->size(); ++i, ++it) h = it->forward<torch::Tensor>(h);
  return {it->forward<torch::Tensor>(h), h};
}

namespace {

class BasicBlock : public nn::Module {
 public:
  BasicBlock(int64_t in, int64_t out, int64_t stride) {
    conv1_ = register_module("conv1",
                             nn::Conv2d(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)));
    norm1_ = register_module("norm1", nn::GroupNorm(nn::GroupNormOptions(std::min<int64_t>(8, out), out)));
    conv2_ = register_module("conv2", nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
    norm2_ = register_module("norm2", nn::GroupNorm(nn::GroupNormOptions(std::min<int64_t>(8, out), out)));
    if (stride != 1 || in != out) {
      shortcut_ =
          register_module("shortcut", nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto y = torch::relu(norm1_->forward(conv1_->forward(x)));
    y = norm2_->forward(conv2_->forward(y));
    return torch::relu(y + (shortcut_ ? shortcut_->forward(x) : x));
  }

 private:
  nn::Conv2d conv1_{nullptr}, conv2_{nullptr}, shortcut_{nullptr};
  nn::GroupNorm norm1_{nullptr}, norm2_{nullptr};
};

}  // namespace

ResNetCifar::ResNetCifar(int64_t channels, int64_t classes, int64_t blocks_per_stage, int64_t width) {
  TORCH_CHECK(blocks_per_stage >= 1, "ResNetCifar: blocks_per_stage must be >= 1, got ", blocks_per_stage);
  body_->push_back(nn::Conv2d(nn::Conv2dOptions(channels, width, 3).padding(1).bias(false)));
  body_->push_back(nn::GroupNorm(nn::GroupNormOptions(std::min<int64_t>(8, width), width)));
  body_->push_back(nn::ReLU());
  int64_t in = width;
  for (int stage = 0; stage < 3; ++stage) {
    const int64_t out = width << stage;
    for (int64_t b = 0; b < blocks_per_stage; ++b) {
      body_->push_back(BasicBlock(in, out, (stage > 0 && b == 0) ? 2 : 1));
      in = out;
    }
  }
  body_->push_back(nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions(1)));
  body_->push_back(nn::Flatten());
  head_ = nn::Linear(in, classes);
  register_module("body", body_);
  register_module("head", head_);
}

torch::Tensor ResNetCifar::forward(torch::Tensor x) {
  return head_->forward(body_->forward(x));
}

std::pair<torch::Tensor, torch::Tensor> ResNetCifar::forward_features(torch::Tensor x) {
  auto h = body_->forward(x);
  return {head_->forward(h), h};
}

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = {"mlp", "cnn", "resnet"};
  return names;
}

std::shared_ptr<Classifier> make_model(const std::string& name, const std::vector<int64_t>& input_shape,
                                       int64_t classes) {
  TORCH_CHECK(!input_shape.empty(), "make_model: empty input shape");
  if (name == "mlp") {
    const auto in = std::accumulate(input_shape.begin(), input_shape.end(), int64_t{1}, std::multiplies<>());
    return std::make_shared<MLP>(in, std::vector<int64_t>{256, 128}, classes);
  }
  if (name == "cnn" || name == "resnet") {
    TORCH_CHECK(input_shape.size() == 3, "model '", name, "' needs image inputs [C, H, W], got ",
                c10::IntArrayRef(input_shape));
    if (name == "cnn")
      return std::make_shared<SmallCNN>(input_shape[0], input_shape[1], input_shape[2], classes);
    return std::make_shared<ResNetCifar>(input_shape[0], classes);
  }
  TORCH_CHECK(false, "unknown model '", name, "' (choose one of mlp, cnn, resnet)");
}

}  // namespace sgdx::models

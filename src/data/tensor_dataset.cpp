#include "sgdx/data/tensor_dataset.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include "sgdx/data/cifar10.h"
#include "sgdx/data/idx.h"

namespace sgdx::data {

TensorDataset::TensorDataset(at::Tensor inputs, at::Tensor targets)
    : inputs_(std::move(inputs)), targets_(std::move(targets)) {
  TORCH_CHECK(inputs_.defined() && targets_.defined(), "TensorDataset: undefined tensor");
  TORCH_CHECK(inputs_.dim() >= 1 && targets_.dim() >= 1 && inputs_.size(0) == targets_.size(0),
              "TensorDataset: inputs have ", inputs_.dim() ? inputs_.size(0) : 0, " rows but targets have ",
              targets_.dim() ? targets_.size(0) : 0);
}

torch::data::Example<> TensorDataset::get_batch(c10::ArrayRef<size_t> indices) {
  const int64_t n = inputs_.size(0);
  auto idx = at::empty({static_cast<int64_t>(indices.size())}, at::kLong);
  auto* p = idx.data_ptr<int64_t>();
  for (size_t i = 0; i < indices.size(); ++i) {
    TORCH_CHECK(indices[i] < static_cast<size_t>(n), "TensorDataset: index ", indices[i],
                " out of range for a dataset of ", n, " examples");
    p[i] = static_cast<int64_t>(indices[i]);
  }
  return {inputs_.index_select(0, idx), targets_.index_select(0, idx)};
}

std::optional<size_t> TensorDataset::size() const {
  return static_cast<size_t>(inputs_.size(0));
}

const std::vector<std::string>& dataset_names() {
  static const std::vector<std::string> names = {"fashion-mnist", "mnist", "cifar10", "teacher"};
  return names;
}

std::string default_data_dir(const std::string& name) {
  if (name == "fashion-mnist") return "/usr/share/datasets/fashion-mnist";
  const char* env = std::getenv("SGDX_DATA_DIR");
  const std::string root = env != nullptr ? env : "";
  if (root.empty()) return "";
  return (std::filesystem::path(root) / (name == "cifar10" ? "cifar10" : name)).string();
}

namespace {

std::string shape_text(const at::Tensor& images) {
  std::string text;
  for (const auto d : images.sizes().slice(1)) text += (text.empty() ? "" : "x") + std::to_string(d);
  return text;
}

// Standardises both splits with the training set's mean and standard deviation. A constant training
// set (standard deviation 0) is refused: dividing by its deviation would make every input NaN or inf.
DatasetSplits standardised(const std::string& name, const std::string& dir, const ImageSet& train,
                           const ImageSet& test) {
  TORCH_CHECK(train.images.size(0) > 0 && test.images.size(0) > 0, "dataset '", name, "' in '", dir,
              "': the ", train.images.size(0) == 0 ? "training" : "test", " split has no examples");
  TORCH_CHECK(train.images.sizes().slice(1) == test.images.sizes().slice(1), "dataset '", name, "' in '", dir,
              "': the training images are ", shape_text(train.images), " but the test images are ",
              shape_text(test.images));
  // min == max, not std == 0: the float32 deviation of a constant set is a rounding error, not 0.
  const auto [lo, hi] = at::aminmax(train.images);
  TORCH_CHECK(lo.item<float>() < hi.item<float>(), "dataset '", name, "' in '", dir,
              "': the training images are constant (every pixel is ", lo.item<float>(),
              ", standard deviation 0), so they cannot be standardised");
  // Per channel, over every image and pixel of the training file (for CIFAR-10 the familiar
  // 0.4914, 0.4822, 0.4465 / 0.2470, 0.2435, 0.2616), accumulated in float64.
  const auto images64 = train.images.to(at::kDouble);
  const auto mean = images64.mean({0, 2, 3}, /*keepdim=*/true);
  const auto std = images64.std({0, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
  for (int64_t ch = 0; ch < std.numel(); ++ch) {
    const double s = std.flatten()[ch].item<double>();
    TORCH_CHECK(s > 0 && std::isfinite(s), "dataset '", name, "' in '", dir, "': channel ", ch,
                " of the training images has standard deviation ", s, ", so it cannot be standardised");
  }
  const auto mean32 = mean.to(at::kFloat), std32 = std.to(at::kFloat);
  train.images.sub_(mean32).div_(std32);
  test.images.sub_(mean32).div_(std32);
  auto shape = train.images.sizes().slice(1).vec();
  return {name,
          TensorDataset(train.images, train.labels),
          TensorDataset(test.images, test.labels),
          10,
          shape,
          std::nullopt};
}

// The directory the files are read from: one line naming it when it is missing, a file or unreadable.
void check_data_directory(const std::string& name, const std::string& dir) {
  std::error_code ec;
  const auto st = std::filesystem::status(dir, ec);
  TORCH_CHECK(std::filesystem::exists(st) || !ec || ec == std::errc::no_such_file_or_directory ||
                  ec == std::errc::not_a_directory,
              "data directory '", dir, "' for dataset '", name, "': ", ec.message());
  TORCH_CHECK(std::filesystem::exists(st), "data directory '", dir, "' for dataset '", name,
              "' does not exist", name == "fashion-mnist" ? " (install Debian's dataset-fashion-mnist)" : "");
  TORCH_CHECK(std::filesystem::is_directory(st), "data directory '", dir, "' for dataset '", name,
              "' is not a directory");
}

DatasetSplits teacher_student() {
  constexpr int64_t kIn = 100, kHidden = 50, kClasses = 10, kTrain = 10000, kTest = 2000;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20170123);
  auto w1 = at::normal(0.0, 1.0 / std::sqrt(double(kIn)), {kIn, kHidden}, gen);
  auto w2 = at::normal(0.0, 1.0 / std::sqrt(double(kHidden)), {kHidden, kClasses}, gen);
  auto make = [&](int64_t n) {
    auto x = at::normal(0.0, 1.0, {n, kIn}, gen);
    auto y = at::tanh(x.mm(w1)).mm(w2).argmax(1);
    return TensorDataset(x, y);
  };
  auto train = make(kTrain);
  auto test = make(kTest);
  return {"teacher", train, test, kClasses, {kIn}, std::nullopt};
}

}  // namespace

DatasetSplits load_dataset(const std::string& name, const std::string& dir) {
  const auto& names = dataset_names();
  TORCH_CHECK(std::find(names.begin(), names.end(), name) != names.end(), "unknown dataset '", name,
              "' (choose one of fashion-mnist, mnist, cifar10, teacher)");
  if (name == "teacher") return teacher_student();
  const std::string d = dir.empty() ? default_data_dir(name) : dir;
  TORCH_CHECK(!d.empty(), "dataset '", name,
              "' needs a directory: pass one or set SGDX_DATA_DIR (files under $SGDX_DATA_DIR/", name, ")");
  check_data_directory(name, d);
  try {
    if (name == "cifar10") return standardised(name, d, load_cifar10(d, true), load_cifar10(d, false));
    return standardised(name, d, load_mnist_family(d, true), load_mnist_family(d, false));
  } catch (const std::filesystem::filesystem_error& e) {  // one c10::Error line, as for every other problem
    TORCH_CHECK(false, "dataset '", name, "' in '", d, "': ", e.what());
  }
}

void hold_out_validation(DatasetSplits& data, int64_t count, uint64_t seed) {
  TORCH_CHECK(!data.validation, "dataset '", data.name, "' already has a validation split of ",
              data.validation ? data.validation->inputs().size(0) : 0, " examples");
  const int64_t n = data.train.inputs().size(0);
  TORCH_CHECK(count >= 0 && count < n, "validation split of dataset '", data.name, "': ", count,
              " examples requested from a training set of ", n, " (at least one must stay for training)");
  if (count == 0) return;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto perm = at::randperm(n, gen, at::kLong);
  const auto held = std::get<0>(perm.narrow(0, 0, count).sort());
  const auto kept = std::get<0>(perm.narrow(0, count, n - count).sort());
  data.validation.emplace(data.train.inputs().index_select(0, held),
                          data.train.targets().index_select(0, held));
  data.train =
      TensorDataset(data.train.inputs().index_select(0, kept), data.train.targets().index_select(0, kept));
}

}  // namespace sgdx::data

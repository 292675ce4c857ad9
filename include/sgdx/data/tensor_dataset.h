#pragma once
#include <torch/data/datasets/base.h>
#include <torch/data/example.h>

#include <optional>
#include <string>
#include <vector>

#include "sgdx/export.h"

namespace sgdx::data {

/// An in-memory dataset whose batches are gathered with one index_select, so
/// any index sampler (LibTorch's or sgdx's) feeds torch::data::make_data_loader
/// without per-example copies or a Stack transform.
class SGDX_API TensorDataset
    : public torch::data::datasets::BatchDataset<TensorDataset, torch::data::Example<>,
                                                 c10::ArrayRef<size_t>> {
 public:
  TensorDataset(at::Tensor inputs, at::Tensor targets);
  torch::data::Example<> get_batch(c10::ArrayRef<size_t> indices) override;
  std::optional<size_t> size() const override;
  const at::Tensor& inputs() const { return inputs_; }
  const at::Tensor& targets() const { return targets_; }

 private:
  at::Tensor inputs_, targets_;
};

struct DatasetSplits {
  std::string name;
  TensorDataset train;
  TensorDataset test;
  int64_t num_classes;
  std::vector<int64_t> input_shape;         ///< one example, e.g. {1, 28, 28}
  std::optional<TensorDataset> validation;  ///< held out from the training set (hold_out_validation)
};

/// Names accepted by load_dataset.
SGDX_API const std::vector<std::string>& dataset_names();

/// Where `name` is looked for when no directory is given: fashion-mnist in
/// Debian's dataset-fashion-mnist package, mnist and cifar10 under
/// $SGDX_DATA_DIR/{mnist,cifar10}.
SGDX_API std::string default_data_dir(const std::string& name);

/// Loads a dataset by name: fashion-mnist, mnist, cifar10 (files, each channel
/// normalised with the whole training file's mean and std of that channel) or teacher (a synthetic
/// teacher-student task: x ~ N(0, I_100), labels = argmax of a fixed random
/// 100-50-10 tanh network; the task is the same for every training seed).
/// Throws one c10::Error line naming the directory or file when the directory is
/// missing or not a directory, a split is empty, the training and test images
/// differ in shape, or the training images are constant (standard deviation 0:
/// refused, since standardising would divide by zero).
SGDX_API DatasetSplits load_dataset(const std::string& name, const std::string& dir = "");

/// Moves `count` training examples, chosen by a permutation drawn from `seed`, into
/// `data.validation`; both parts keep the examples' original order. count must leave
/// at least one training example (0: no split). A second split is refused.
SGDX_API void hold_out_validation(DatasetSplits& data, int64_t count, uint64_t seed = 0);

}  // namespace sgdx::data

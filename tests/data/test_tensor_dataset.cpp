// load_dataset on tiny MNIST-family and CIFAR-10 files: standardisation (per channel), the
// validation split, and one c10::Error naming the
// directory or file for every degenerate input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "sgdx/data/tensor_dataset.h"
#include "test_util.h"

namespace {

using sgdx::data::load_dataset;
using sgdx::testing::TempDir;

// Expects load_dataset("mnist", dir) to throw a c10::Error (not any other exception) whose
// message contains every needle.
void expect_refused(const std::string& dir, std::initializer_list<std::string> needles) {
  try {
    load_dataset("mnist", dir);
    ADD_FAILURE() << "load_dataset accepted '" << dir << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a c10::Error: " << e.what();
  }
}

// n images of h x w whose every pixel is `value`, labels i % 10.
void write_constant_split(const std::string& dir, const std::string& prefix, uint32_t n, uint32_t h,
                          uint32_t w, uint8_t value) {
  std::vector<uint8_t> pixels(size_t(n) * h * w, value), labels;
  for (uint32_t i = 0; i < n; ++i) labels.push_back(static_cast<uint8_t>(i % 10));
  sgdx::testing::write_bytes(dir + "/" + prefix + "-images-idx3-ubyte",
                             sgdx::testing::idx_bytes(0x08, {n, h, w}, pixels), false);
  sgdx::testing::write_bytes(dir + "/" + prefix + "-labels-idx1-ubyte",
                             sgdx::testing::idx_bytes(0x08, {n}, labels), false);
}

TEST(LoadDataset, StandardisesWithTheTrainingStatistics) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 20, 6, 5, false);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 7, 6, 5, true);
  auto s = load_dataset("mnist", dir.path.string());
  EXPECT_EQ(s.input_shape, (std::vector<int64_t>{1, 6, 5}));
  EXPECT_EQ(s.train.size().value(), 20u);
  EXPECT_EQ(s.test.size().value(), 7u);
  EXPECT_NEAR(s.train.inputs().mean().item<double>(), 0.0, 1e-5);
  EXPECT_NEAR(s.train.inputs().std().item<double>(), 1.0, 1e-5);
  EXPECT_TRUE(at::isfinite(s.test.inputs()).all().item<bool>());
}

TEST(LoadDataset, MissingDirectoryOrAFileInsteadIsRefusedByName) {
  TempDir dir;
  expect_refused(dir.file("missing"), {"data directory '" + dir.file("missing") + "'", "does not exist"});
  std::ofstream(dir.file("afile")) << "x";
  expect_refused(dir.file("afile"), {"'" + dir.file("afile") + "'", "is not a directory"});
  expect_refused(dir.file("afile/sub"), {"'" + dir.file("afile/sub") + "'", "does not exist"});
  const std::string too_long = dir.file(std::string(300, 'x'));
  expect_refused(too_long, {"data directory '" + too_long + "'"});
}

TEST(LoadDataset, TrainingAndTestImagesOfDifferentShapesAreRefused) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 10, 8, 8, false);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 10, 9, 8, false);
  expect_refused(dir.path.string(),
                 {dir.path.string(), "training images are 1x8x8 but the test images are 1x9x8"});
}

TEST(LoadDataset, ConstantTrainingImagesAreRefusedNotDividedByZero) {
  TempDir dir;
  write_constant_split(dir.path.string(), "train", 10, 4, 4, 17);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 10, 4, 4, false);
  expect_refused(dir.path.string(),
                 {dir.path.string(), "training images are constant", "standard deviation 0"});
}

TEST(LoadDataset, EmptySplitsAndEmptyImagesAreRefusedByName) {
  {
    TempDir dir;
    sgdx::testing::write_mnist_split(dir.path.string(), "train", 0, 4, 4, false);
    sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 10, 4, 4, false);
    expect_refused(dir.path.string(), {dir.path.string()});
  }
  {
    TempDir dir;
    sgdx::testing::write_mnist_split(dir.path.string(), "train", 10, 4, 4, false);
    sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 0, 4, 4, false);
    expect_refused(dir.path.string(), {dir.path.string()});
  }
  {
    TempDir dir;  // images of 0 x 4 pixels
    sgdx::testing::write_mnist_split(dir.path.string(), "train", 10, 0, 4, false);
    sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 10, 0, 4, false);
    expect_refused(dir.path.string(), {dir.path.string()});
  }
}

TEST(LoadDataset, ADirectoryWhereAFileIsExpectedIsNamed) {
  TempDir dir;
  sgdx::testing::write_mnist_split(dir.path.string(), "train", 10, 4, 4, false);
  sgdx::testing::write_mnist_split(dir.path.string(), "t10k", 10, 4, 4, false);
  std::filesystem::remove(dir.file("train-images-idx3-ubyte"));
  std::filesystem::create_directories(dir.file("train-images-idx3-ubyte"));
  expect_refused(dir.path.string(), {dir.file("train-images-idx3-ubyte")});
}

TEST(LoadDataset, UnknownNameIsRefused) {
  SGDX_EXPECT_THROW_MSG(load_dataset("imagenet"), "unknown dataset 'imagenet'");
}

}  // namespace

namespace {

// n CIFAR-10 records whose three channels have different levels and spreads.
std::vector<uint8_t> cifar_records(int n, uint32_t seed) {
  std::vector<uint8_t> b;
  uint32_t s = seed;
  for (int i = 0; i < n; ++i) {
    b.push_back(static_cast<uint8_t>(i % 10));
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 1024; ++k) {
        s = s * 1664525u + 1013904223u;
        b.push_back(static_cast<uint8_t>(40 * c + (s >> 24) % (60 + 50 * c)));
      }
  }
  return b;
}

void write_cifar(const std::filesystem::path& dir, int per_batch, int test) {
  for (int i = 1; i <= 5; ++i)
    sgdx::testing::write_bytes((dir / ("data_batch_" + std::to_string(i) + ".bin")).string(),
                               cifar_records(per_batch, i), false);
  sgdx::testing::write_bytes((dir / "test_batch.bin").string(), cifar_records(test, 99), false);
}

}  // namespace

TEST(LoadDataset, Cifar10IsStandardisedPerChannelWithTheTrainingStatistics) {
  TempDir dir;
  write_cifar(dir.path, 4, 3);
  // Reference: each channel's mean and sample std over the 20 training images, from the bytes.
  double sum[3] = {0, 0, 0}, sq[3] = {0, 0, 0};
  std::vector<std::vector<uint8_t>> batches;
  for (int i = 1; i <= 5; ++i) batches.push_back(cifar_records(4, i));
  for (const auto& b : batches)
    for (size_t r = 0; r < 4; ++r)
      for (int c = 0; c < 3; ++c)
        for (int k = 0; k < 1024; ++k) sum[c] += b[r * 3073 + 1 + c * 1024 + k] / 255.0;
  const double m = 20 * 1024;
  for (const auto& b : batches)
    for (size_t r = 0; r < 4; ++r)
      for (int c = 0; c < 3; ++c)
        for (int k = 0; k < 1024; ++k) {
          const double d = b[r * 3073 + 1 + c * 1024 + k] / 255.0 - sum[c] / m;
          sq[c] += d * d;
        }
  auto data = sgdx::data::load_dataset("cifar10", dir.path.string());
  const auto test_bytes = cifar_records(3, 99);
  for (int c = 0; c < 3; ++c) {
    const double mean = sum[c] / m, sd = std::sqrt(sq[c] / (m - 1));
    // Pixel (image 2, channel c, row 5, col 6) of the first batch and of the test set.
    const double want_train = (batches[0][2 * 3073 + 1 + c * 1024 + 5 * 32 + 6] / 255.0 - mean) / sd;
    const double want_test = (test_bytes[1 * 3073 + 1 + c * 1024 + 5 * 32 + 6] / 255.0 - mean) / sd;
    EXPECT_NEAR(data.train.inputs()[2][c][5][6].item<double>(), want_train, 1e-5) << "channel " << c;
    EXPECT_NEAR(data.test.inputs()[1][c][5][6].item<double>(), want_test, 1e-5) << "channel " << c;
    EXPECT_NEAR(data.train.inputs().select(1, c).mean().item<double>(), 0.0, 1e-5);
    EXPECT_NEAR(data.train.inputs().select(1, c).std().item<double>(), 1.0, 1e-4);
  }
}

TEST(HoldOutValidation, SplitsDisjointlyDeterministicallyAndInOrder) {
  const int64_t n = 1000;
  auto make = [&] {
    sgdx::data::DatasetSplits d{
        "toy",
        sgdx::data::TensorDataset(torch::arange(n).to(torch::kFloat).unsqueeze(1), torch::arange(n) % 10),
        sgdx::data::TensorDataset(torch::zeros({5, 1}), torch::zeros({5}, torch::kLong)),
        10,
        {1},
        std::nullopt};
    return d;
  };
  auto a = make();
  sgdx::data::hold_out_validation(a, 250, 0);
  ASSERT_TRUE(a.validation.has_value());
  const auto train_ids = a.train.inputs().squeeze(1).to(torch::kLong);
  const auto val_ids = a.validation->inputs().squeeze(1).to(torch::kLong);
  EXPECT_EQ(train_ids.size(0), 750);
  EXPECT_EQ(val_ids.size(0), 250);
  // Disjoint, together every example once, each part in the original order, labels follow.
  EXPECT_TRUE(torch::equal(std::get<0>(torch::cat({train_ids, val_ids}).sort()), torch::arange(n)));
  EXPECT_TRUE(torch::equal(std::get<0>(train_ids.sort()), train_ids));
  EXPECT_TRUE(torch::equal(a.validation->targets(), val_ids % 10));
  // Not a prefix or a stride: a random subset (its mean index is near n/2).
  EXPECT_NEAR(val_ids.to(torch::kDouble).mean().item<double>(), 499.5, 60);
  // The same seed gives the same split; another seed another split.
  auto b = make();
  sgdx::data::hold_out_validation(b, 250, 0);
  EXPECT_TRUE(torch::equal(b.validation->inputs(), a.validation->inputs()));
  auto c = make();
  sgdx::data::hold_out_validation(c, 250, 1);
  EXPECT_FALSE(torch::equal(c.validation->inputs(), a.validation->inputs()));
  // Refusals: the whole set, a negative count, a second split.
  auto d = make();
  SGDX_EXPECT_THROW_MSG(sgdx::data::hold_out_validation(d, n, 0),
                        "1000 examples requested from a training set of 1000");
  SGDX_EXPECT_THROW_MSG(sgdx::data::hold_out_validation(d, -1, 0), "-1 examples requested");
  SGDX_EXPECT_THROW_MSG(sgdx::data::hold_out_validation(a, 10, 0), "already has a validation split of 250");
  sgdx::data::hold_out_validation(d, 0, 0);
  EXPECT_FALSE(d.validation.has_value());
}

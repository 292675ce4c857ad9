// load_dataset on tiny MNIST-family files: standardisation, and one c10::Error naming the
// directory or file for every degenerate input.
#include <gtest/gtest.h>

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

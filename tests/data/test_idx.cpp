#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "sgdx/data/idx.h"
#include "sgdx/data/tensor_dataset.h"
#include "test_util.h"

using sgdx::testing::TempDir;
using sgdx::testing::write_bytes;

using sgdx::testing::idx_bytes;
using sgdx::testing::write_mnist_split;

TEST(Idx, ReadsRawAndGzippedFilesOfAnyCount) {
  TempDir dir;
  for (bool gz : {false, true}) {
    for (uint32_t n : {0u, 1u, 37u}) {
      std::vector<uint8_t> payload;
      for (uint32_t i = 0; i < n * 6; ++i) payload.push_back(static_cast<uint8_t>(i * 7));
      const auto path = dir.file("a" + std::to_string(n) + (gz ? ".gz" : ""));
      write_bytes(path, idx_bytes(0x08, {n, 2, 3}, payload), gz);
      auto t = sgdx::data::read_idx(path);
      ASSERT_EQ(t.sizes(), (std::vector<int64_t>{n, 2, 3}));
      ASSERT_EQ(t.scalar_type(), torch::kByte);
      for (uint32_t i = 0; i < n * 6; ++i) ASSERT_EQ(t.flatten()[i].item<int>(), payload[i]);
    }
  }
}

TEST(Idx, ReadsBigEndianWideTypes) {
  TempDir dir;
  // int32 values 1 and -2, float32 1.5, big-endian.
  write_bytes(dir.file("i32"), idx_bytes(0x0C, {2}, {0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe}), false);
  auto t = sgdx::data::read_idx(dir.file("i32"));
  EXPECT_EQ(t.scalar_type(), torch::kInt);
  EXPECT_EQ(t[0].item<int>(), 1);
  EXPECT_EQ(t[1].item<int>(), -2);
  write_bytes(dir.file("f32"), idx_bytes(0x0D, {1}, {0x3f, 0xc0, 0, 0}), false);
  EXPECT_EQ(sgdx::data::read_idx(dir.file("f32")).item<float>(), 1.5f);
}

TEST(Idx, CorruptFilesGiveErrorsNamingFileAndProblem) {
  TempDir dir;
  const auto good = idx_bytes(0x08, {4, 2, 2}, std::vector<uint8_t>(16, 1));
  auto truncated = good;
  truncated.resize(good.size() - 3);
  write_bytes(dir.file("trunc"), truncated, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("trunc")),
                        "trunc' has 29 bytes but its header ([4, 2, 2]) implies 32 (truncated)");
  auto trailing = good;
  trailing.push_back(0);
  write_bytes(dir.file("trail"), trailing, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("trail")), "(trailing data)");
  auto magic = good;
  magic[0] = 7;
  write_bytes(dir.file("magic"), magic, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("magic")), "bad magic number");
  auto type = good;
  type[2] = 0x42;
  write_bytes(dir.file("type"), type, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("type")), "unknown element type 0x42");
  write_bytes(dir.file("hdr"), {0, 0, 8, 3, 0, 0}, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("hdr")), "truncated inside its header");
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("none")), "cannot open");
  // A gzip stream cut in half.
  write_bytes(dir.file("g.gz"), idx_bytes(0x08, {1000}, std::vector<uint8_t>(1000, 3)), true);
  auto gz = sgdx::testing::read_bytes(dir.file("g.gz"));
  gz.resize(gz.size() / 2);
  write_bytes(dir.file("cut.gz"), gz, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("cut.gz")), "cut.gz' is a");
}

namespace {
// Sets an environment variable for one scope (each test runs in its own process under ctest).
struct ScopedEnv {
  std::string name;
  ScopedEnv(std::string n, const std::string& value) : name(std::move(n)) {
    setenv(name.c_str(), value.c_str(), 1);
  }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};
}  // namespace

TEST(Idx, DimensionsThatOverflowOrExceedMemoryAreRefusedBeforeAllocating) {
  TempDir dir;
  // 2^16 * 2^16 * 2^16 one-byte elements = 2^48 bytes (256 TiB): more than any machine's memory.
  write_bytes(dir.file("huge"), idx_bytes(0x08, {65536, 65536, 65536}, {}), false);
  SGDX_EXPECT_THROW_MSG(
      sgdx::data::read_idx(dir.file("huge")),
      "IDX file '" + dir.file("huge") +
          "': dense storage of [65536, 65536, 65536] x 1-byte elements needs 281474976710656 "
          "bytes, more than the limit of");
  // (2^32 - 1)^2 * 8 bytes > 2^63: must be detected, not wrapped.
  write_bytes(dir.file("wrap"), idx_bytes(0x0E, {4294967295u, 4294967295u}, {}), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("wrap")),
                        "[4294967295, 4294967295] x 8-byte elements overflows int64");
  // 2^32 * 2^32 = 2^64 wraps to 0 in 64 bits: a header-only file would then "match".
  write_bytes(dir.file("wrap0"), idx_bytes(0x08, {65536, 65536, 65536, 65536}, {}), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("wrap0")), "overflows int64");
  // Zero elements, but the strides of the other dims overflow.
  write_bytes(dir.file("zero"), idx_bytes(0x08, {0, 4294967295u, 4294967295u, 4294967295u}, {}), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("zero")), "overflows int64");
  write_bytes(dir.file("nodims"), {0, 0, 8, 0}, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("nodims")), "nodims' declares 0 dimensions");
}

TEST(Idx, MemoryLimitCoversRawFilesGzipAndHeaders) {
  TempDir dir;
  ScopedEnv limit("SGDX_MAX_DATA_BYTES", "100");
  EXPECT_EQ(sgdx::data::max_dataset_bytes(), 100);
  write_bytes(dir.file("h"), idx_bytes(0x0C, {5, 6}, {}), false);  // 120 bytes of int32
  SGDX_EXPECT_THROW_MSG(
      sgdx::data::read_idx(dir.file("h")),
      "[5, 6] x 4-byte elements needs 120 bytes, more than the limit of 100 bytes (SGDX_MAX_DATA_BYTES)");
  write_bytes(dir.file("raw"), idx_bytes(0x08, {200}, std::vector<uint8_t>(200, 1)), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("raw")),
                        "raw' has 208 bytes, more than the limit of 100 bytes");
  // 1000 zero bytes compress to a few dozen: refused while inflating, not after.
  write_bytes(dir.file("bomb.gz"), std::vector<uint8_t>(1000, 0), true);
  ASSERT_LT(sgdx::testing::read_bytes(dir.file("bomb.gz")).size(), 100u);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("bomb.gz")),
                        "bomb.gz' inflates to more than the limit of 100 bytes");
  ScopedEnv bad("SGDX_MAX_DATA_BYTES", "12k");
  SGDX_EXPECT_THROW_MSG(sgdx::data::max_dataset_bytes(),
                        "SGDX_MAX_DATA_BYTES must be a positive integer, got '12k'");
}

TEST(Idx, GzipMembersTrailingGarbageAndCorruptStreams) {
  TempDir dir;
  // Two gzip members (as `cat a.gz b.gz` makes) hold one file.
  const auto whole = idx_bytes(0x08, {2, 3}, {1, 2, 3, 4, 5, 6});
  write_bytes(dir.file("p1.gz"), std::vector<uint8_t>(whole.begin(), whole.begin() + 7), true);
  write_bytes(dir.file("p2.gz"), std::vector<uint8_t>(whole.begin() + 7, whole.end()), true);
  auto two = sgdx::testing::read_bytes(dir.file("p1.gz"));
  const auto p2 = sgdx::testing::read_bytes(dir.file("p2.gz"));
  two.insert(two.end(), p2.begin(), p2.end());
  write_bytes(dir.file("two.gz"), two, false);
  auto t = sgdx::data::read_idx(dir.file("two.gz"));
  EXPECT_TRUE(torch::equal(t, torch::tensor({1, 2, 3, 4, 5, 6}, torch::kByte).reshape({2, 3})));
  auto garbage = two;
  garbage.insert(garbage.end(), {'x', 'y', 'z'});
  write_bytes(dir.file("garbage.gz"), garbage, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("garbage.gz")), "garbage.gz' is a corrupt gzip file");
  auto flipped = sgdx::testing::read_bytes(dir.file("p1.gz"));
  flipped[12] ^= 0xff;  // inside the deflate data
  write_bytes(dir.file("flipped.gz"), flipped, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.file("flipped.gz")), "flipped.gz' is a");
}

TEST(Idx, DirectoriesWhereFilesAreExpectedAndEmptySplits) {
  TempDir dir;
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_idx(dir.path.string()),
                        "IDX file '" + dir.path.string() + "' is a directory, not a file");
  std::filesystem::create_directories(dir.path / "train-images-idx3-ubyte");
  write_bytes(dir.file("train-labels-idx1-ubyte"), idx_bytes(0x08, {1}, {0}), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.path.string(), true),
                        "IDX file '" + dir.file("train-images-idx3-ubyte") + "' is a directory, not a file");
  write_bytes(dir.file("plain"), {1, 2, 3}, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.file("plain"), true),
                        "MNIST-family data directory '" + dir.file("plain") + "' is not a directory");
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.file("absent"), true), "absent' not found");
  write_mnist_split(dir.path.string(), "t10k", 0, 4, 5, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.path.string(), false),
                        "t10k-images-idx3-ubyte' holds no images ([0, 4, 5])");
  write_mnist_split(dir.path.string(), "t10k", 3, 0, 5, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.path.string(), false),
                        "holds images of 0 x 5 pixels");
}

TEST(Idx, LoadsMnistFamilySplitAndChecksCounts) {
  TempDir dir;
  write_mnist_split(dir.path.string(), "train", 25, 4, 5, true);
  write_mnist_split(dir.path.string(), "t10k", 7, 4, 5, false);
  auto train = sgdx::data::load_mnist_family(dir.path.string(), true);
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{25, 1, 4, 5}));
  EXPECT_FLOAT_EQ(train.images[3][0][1][2].item<float>(), float((3 + 1 * 5 + 2) % 256) / 255.f);
  EXPECT_EQ(train.labels[13].item<int64_t>(), 3);
  auto test = sgdx::data::load_mnist_family(dir.path.string(), false);
  EXPECT_EQ(test.labels.size(0), 7);
  // Label file with a different count.
  write_bytes(dir.file("t10k-labels-idx1-ubyte"), idx_bytes(0x08, {6}, std::vector<uint8_t>(6, 0)), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.path.string(), false), "has 7 images but");
  write_bytes(dir.file("t10k-labels-idx1-ubyte"), idx_bytes(0x08, {7}, std::vector<uint8_t>(7, 12)), false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_mnist_family(dir.path.string(), false), "label 12 outside 0..9");
}

TEST(Idx, DebianFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << "Debian's dataset-fashion-mnist is not installed";
  auto train = sgdx::data::load_mnist_family(dir, true);
  auto test = sgdx::data::load_mnist_family(dir, false);
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  // Fashion-MNIST is balanced: 6000 / 1000 per class.
  EXPECT_TRUE(torch::equal(torch::bincount(train.labels), torch::full({10}, 6000, torch::kLong)));
  EXPECT_TRUE(torch::equal(torch::bincount(test.labels), torch::full({10}, 1000, torch::kLong)));
  auto splits = sgdx::data::load_dataset("fashion-mnist");
  EXPECT_NEAR(splits.train.inputs().mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(splits.train.inputs().std().item<double>(), 1.0, 1e-4);
}

TEST(Idx, SharedMnistWhenPresent) {
  const auto root = sgdx::testing::data_dir();
  if (root.empty() || !std::filesystem::exists(root + "/mnist")) GTEST_SKIP() << "SGDX_DATA_DIR/mnist absent";
  auto train = sgdx::data::load_mnist_family(root + "/mnist", true);
  auto test = sgdx::data::load_mnist_family(root + "/mnist", false);
  // Class counts from shared/data/README.md.
  const std::vector<int64_t> train_counts = {5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949};
  const std::vector<int64_t> test_counts = {980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009};
  EXPECT_TRUE(torch::equal(torch::bincount(train.labels), torch::tensor(train_counts)));
  EXPECT_TRUE(torch::equal(torch::bincount(test.labels), torch::tensor(test_counts)));
}

TEST(TensorDataset, GetBatchAndErrors) {
  sgdx::data::TensorDataset ds(torch::arange(10).reshape({5, 2}), torch::arange(5));
  auto b = ds.get_batch(std::vector<size_t>{4, 0});
  EXPECT_TRUE(torch::equal(b.target, torch::tensor({4, 0}, torch::kLong)));
  EXPECT_TRUE(torch::equal(b.data, torch::tensor({8, 9, 0, 1}, torch::kLong).reshape({2, 2})));
  SGDX_EXPECT_THROW_MSG(ds.get_batch(std::vector<size_t>{5}), "index 5 out of range for a dataset of 5");
  SGDX_EXPECT_THROW_MSG(sgdx::data::TensorDataset(torch::zeros({3}), torch::zeros({4})),
                        "inputs have 3 rows but targets have 4");
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_dataset("imagenet"), "unknown dataset 'imagenet'");
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_dataset("mnist", "/nonexistent/dir"),
                        "data directory '/nonexistent/dir'");
}

TEST(TensorDataset, TeacherStudentIsFixedAcrossCalls) {
  auto a = sgdx::data::load_dataset("teacher");
  auto b = sgdx::data::load_dataset("teacher");
  EXPECT_TRUE(torch::equal(a.train.inputs(), b.train.inputs()));
  EXPECT_TRUE(torch::equal(a.test.targets(), b.test.targets()));
  EXPECT_EQ(a.train.inputs().sizes(), (std::vector<int64_t>{10000, 100}));
  // Every class appears: the task is not degenerate.
  EXPECT_EQ(torch::bincount(a.train.targets(), {}, 10).gt(0).sum().item<int64_t>(), 10);
}

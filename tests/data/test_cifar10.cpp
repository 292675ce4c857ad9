#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sgdx/data/cifar10.h"
#include "sgdx/data/tensor_dataset.h"
#include "test_util.h"

using sgdx::testing::TempDir;
using sgdx::testing::write_bytes;

namespace {
// n records in the exact CIFAR-10 binary layout: <label><1024 R><1024 G><1024 B>.
std::vector<uint8_t> cifar_records(int n, int offset) {
  std::vector<uint8_t> b;
  for (int i = 0; i < n; ++i) {
    b.push_back(static_cast<uint8_t>((i + offset) % 10));
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 1024; ++k) b.push_back(static_cast<uint8_t>((i + offset + 7 * c + k) % 251));
  }
  return b;
}
}  // namespace

TEST(Cifar10, ReadsGeneratedBatchExactly) {
  TempDir dir;
  for (bool gz : {false, true}) {
    const auto path = dir.file(gz ? "b.bin.gz" : "b.bin");
    write_bytes(path, cifar_records(5, 0), gz);
    auto b = sgdx::data::read_cifar10_batch(path);
    ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{5, 3, 32, 32}));
    EXPECT_TRUE(torch::equal(b.labels, torch::arange(5, torch::kLong)));
    // pixel (i=3, channel=2, row=4, col=5) -> k = 4*32+5
    EXPECT_EQ(b.images[3][2][4][5].item<int>(), (3 + 14 + 4 * 32 + 5) % 251);
  }
}

TEST(Cifar10, LoadsSplitsFromDirectory) {
  TempDir dir;
  std::filesystem::create_directories(dir.path / "cifar-10-batches-bin");
  for (int i = 1; i <= 5; ++i)
    write_bytes((dir.path / "cifar-10-batches-bin" / ("data_batch_" + std::to_string(i) + ".bin")).string(),
                cifar_records(3, i), i % 2 == 0);
  write_bytes((dir.path / "cifar-10-batches-bin" / "test_batch.bin").string(), cifar_records(4, 0), false);
  auto train = sgdx::data::load_cifar10(dir.path.string(), true);
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{15, 3, 32, 32}));
  EXPECT_EQ(train.labels[3].item<int64_t>(), 2);  // batch 2 starts at offset 2
  EXPECT_LE(train.images.max().item<float>(), 1.0f);
  auto test = sgdx::data::load_cifar10(dir.path.string(), false);
  EXPECT_EQ(test.labels.size(0), 4);
  auto splits = sgdx::data::load_dataset("cifar10", dir.path.string());
  EXPECT_EQ(splits.input_shape, (std::vector<int64_t>{3, 32, 32}));
}

TEST(Cifar10, CorruptBatchesGiveClearErrors) {
  TempDir dir;
  auto rec = cifar_records(2, 0);
  rec.pop_back();
  write_bytes(dir.file("short.bin"), rec, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_cifar10_batch(dir.file("short.bin")),
                        "short.bin' has 6145 bytes, not a positive multiple of the 3073-byte record");
  auto bad = cifar_records(2, 0);
  bad[3073] = 11;
  write_bytes(dir.file("label.bin"), bad, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_cifar10_batch(dir.file("label.bin")),
                        "label.bin' record 1 has label 11 outside 0..9");
  write_bytes(dir.file("empty.bin"), {}, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_cifar10_batch(dir.file("empty.bin")), "has 0 bytes");
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_cifar10(dir.path.string(), false), "test_batch.bin[.gz]' not found");
}

TEST(Cifar10, DirectoriesGzipLimitsAndTruncatedStreams) {
  TempDir dir;
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_cifar10(dir.file("absent"), false),
                        "CIFAR-10 data directory '" + dir.file("absent") + "' not found");
  write_bytes(dir.file("plain"), {1}, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_cifar10(dir.file("plain"), false), "plain' is not a directory");
  std::filesystem::create_directories(dir.path / "test_batch.bin");
  SGDX_EXPECT_THROW_MSG(sgdx::data::load_cifar10(dir.path.string(), false),
                        "CIFAR-10 file '" + dir.file("test_batch.bin") + "' is a directory, not a file");
  // A gzip stream cut short.
  write_bytes(dir.file("b.bin.gz"), cifar_records(3, 0), true);
  auto gz = sgdx::testing::read_bytes(dir.file("b.bin.gz"));
  gz.resize(gz.size() - 12);  // drop the trailer and some data
  write_bytes(dir.file("cut.bin.gz"), gz, false);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_cifar10_batch(dir.file("cut.bin.gz")),
                        "cut.bin.gz' is a truncated gzip file");
  // Two records inflate to 6146 bytes: over a 5000-byte limit, refused while inflating.
  write_bytes(dir.file("two.bin.gz"), cifar_records(2, 0), true);
  setenv("SGDX_MAX_DATA_BYTES", "5000", 1);
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_cifar10_batch(dir.file("two.bin.gz")),
                        "two.bin.gz' inflates to more than the limit of 5000 bytes");
  unsetenv("SGDX_MAX_DATA_BYTES");
  EXPECT_EQ(sgdx::data::read_cifar10_batch(dir.file("two.bin.gz")).labels.size(0), 2);
}

TEST(Cifar10, SharedCifar10WhenPresent) {
  const auto root = sgdx::testing::data_dir();
  if (root.empty() || !std::filesystem::exists(root + "/cifar10"))
    GTEST_SKIP() << "SGDX_DATA_DIR/cifar10 absent";
  // Class counts from shared/data/README.md: the training set is balanced, the test file
  // holds the first 1,000 official test images.
  auto train = sgdx::data::load_cifar10(root + "/cifar10", true);
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{50000, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(torch::bincount(train.labels), torch::full({10}, 5000, torch::kLong)));
  auto test = sgdx::data::read_cifar10_batch(root + "/cifar10/test_batch.bin.gz");
  EXPECT_TRUE(torch::equal(torch::bincount(test.labels),
                           torch::tensor({103, 89, 100, 103, 90, 86, 112, 102, 106, 109}, torch::kLong)));
}

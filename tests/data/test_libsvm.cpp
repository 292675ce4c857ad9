#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "sgdx/data/libsvm.h"
#include "test_util.h"

using sgdx::testing::TempDir;

namespace {
void write_text(const std::string& path, const std::string& text, bool gz = false) {
  sgdx::testing::write_bytes(path, std::vector<uint8_t>(text.begin(), text.end()), gz);
}
}  // namespace

TEST(Libsvm, ParsesLabelsValuesCommentsAndLineEndsExactly) {
  TempDir dir;
  const std::string text =
      "# a comment line\n"
      "+1 1:0.5 3:-2\n"
      "\n"
      "0\t2:1e-3\r\n"
      "-1 4:7 # trailing comment\n"
      "1 2:-0.125";  // no final newline
  for (bool gz : {false, true}) {
    const auto path = dir.file(gz ? "d.gz" : "d");
    write_text(path, text, gz);
    auto d = sgdx::data::read_libsvm(path);
    const auto expected = torch::tensor({0.5, 0.0, -2.0, 0.0,  //
                                         0.0, 1e-3, 0.0, 0.0,  //
                                         0.0, 0.0, 0.0, 7.0,   //
                                         0.0, -0.125, 0.0, 0.0},
                                        torch::kDouble)
                              .reshape({4, 4});
    EXPECT_TRUE(torch::equal(d.features, expected)) << d.features;
    EXPECT_TRUE(torch::equal(d.labels, torch::tensor({1.0, -1.0, -1.0, 1.0}, torch::kDouble)));
  }
  // Features a file never mentions stay zero columns.
  EXPECT_EQ(sgdx::data::read_libsvm(dir.file("d"), 6).features.sizes(), (std::vector<int64_t>{4, 6}));
  // Underflow to a subnormal is a value, not an error.
  write_text(dir.file("tiny"), "1 1:1e-310\n");
  EXPECT_GT(sgdx::data::read_libsvm(dir.file("tiny")).features.item<double>(), 0.0);
}

TEST(Libsvm, NonFiniteValuesAreRefused) {
  const std::pair<std::string, std::string> cases[] = {
      {"1 1:1 2:nan\n", "line 1: non-finite value nan for feature 2"},
      {"-1 1:1\n1 3:inf\n", "line 2: non-finite value inf for feature 3"},
      {"1 1:-Infinity\n", "line 1: non-finite value -Infinity for feature 1"},
      {"1 1:1e999\n", "line 1: non-finite value 1e999 for feature 1"},  // overflows double
      {"1 5:NAN(0x7)\n", "line 1: non-finite value NAN(0x7) for feature 5"},
  };
  for (const auto& [text, message] : cases) {
    SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm(text, "f.svm"), "'f.svm' " + message);
  }
}

TEST(Libsvm, BadIndicesAreRefused) {
  const std::pair<std::string, std::string> cases[] = {
      {"1 0:1\n", "line 1: feature index must be >= 1, got 0"},
      {"1 -3:1\n", "line 1: feature index must be >= 1, got -3"},
      {"1 99999999999999999999:1\n", "line 1: feature index 99999999999999999999 overflows int64"},
      {"1 -99999999999999999999:1\n", "line 1: feature index -99999999999999999999 overflows int64"},
      {"1 2:1 2:3\n", "line 1: feature indices must increase, got 2 then 2"},
      {"1 x:1\n", "line 1: expected 'index:value', got 'x:1'"},
      {"1 3 :1\n", "line 1: expected 'index:value', got '3 :1'"},
  };
  for (const auto& [text, message] : cases) {
    SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm(text, "f.svm"), "'f.svm' " + message);
  }
}

TEST(Libsvm, DenseSizesThatOverflowOrExceedMemoryAreRefusedBeforeAllocating) {
  // 2 rows x 2^62 features x 8 bytes = 2^66 bytes: must be detected, not wrapped.
  SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm("1 1:1\n-1 4611686018427387904:1\n", "w.svm"),
                        "[2, 4611686018427387904] x 8-byte elements overflows int64");
  // 2 x 2^40 x 8 bytes = 2^44 bytes = 16 TiB.
  SGDX_EXPECT_THROW_MSG(
      sgdx::data::parse_libsvm("1 1:1\n-1 1099511627776:1\n", "m.svm"),
      "LIBSVM file 'm.svm' as a dense float64 matrix: dense storage of [2, 1099511627776] x "
      "8-byte elements needs 17592186044416 bytes, more than the limit of");
  // The same through num_features.
  SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm("1 1:1\n", "n.svm", int64_t{1} << 50),
                        "needs 9007199254740992 bytes");
}

TEST(Libsvm, DegenerateFilesAndMalformedLines) {
  TempDir dir;
  write_text(dir.file("empty"), "");
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("empty")),
                        "LIBSVM file '" + dir.file("empty") + "' holds no examples");
  SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm("# only\n\n   \n", "c.svm"),
                        "LIBSVM file 'c.svm' holds no examples");
  SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm("1\n-1\n", "z.svm"),
                        "LIBSVM file 'z.svm' has no features (2 examples, none with an index:value pair)");
  // Given a width, label-only rows are zero rows.
  EXPECT_TRUE(torch::equal(sgdx::data::parse_libsvm("1\n-1\n", "z.svm", 3).features,
                           torch::zeros({2, 3}, torch::kDouble)));
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.path.string()),
                        "LIBSVM file '" + dir.path.string() + "' is a directory, not a file");
  SGDX_EXPECT_THROW_MSG(sgdx::data::read_libsvm(dir.file("absent")),
                        "cannot open LIBSVM file '" + dir.file("absent") + "'");
  const std::pair<std::string, std::string> cases[] = {
      {"1 1:1\n2 1:1\n", "line 2: label must be +1, -1 or 0/1, got 2"},
      {"1x 3:1\n", "line 1: expected a label, got '1x 3:1'"},
      {"1:2 3:1\n", "line 1: expected a label, got '1:2 3:1'"},
      {"1 3: 1\n", "line 1: missing value for feature 3"},
      {"1 3:\n", "line 1: missing value for feature 3"},
      {"1 3:1x\n", "line 1: bad value '1x' for feature 3"},
      {"1 3:1:2\n", "line 1: bad value '1:2' for feature 3"},
      {std::string("1 1:1\n-1 2:1\0junk\n", 18), "line 2: contains a NUL byte"},
  };
  for (const auto& [text, message] : cases) {
    SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm(text, "f.svm"), "'f.svm' " + message);
  }
  SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm("1 4:1\n", "f.svm", 3),
                        "feature index 4 exceeds num_features 3");
}

// CSR: the same file as ParsesLabels..., row by row against the entries written
// (the dense matrix above is the independent view of the same text).
TEST(LibsvmCsr, HoldsEachRowsEntriesInOrder) {
  const std::string text =
      "# a comment line\n"
      "+1 1:0.5 3:-2\n"
      "\n"
      "0\t2:1e-3\r\n"
      "-1 # a row without features\n"
      "-1 4:7 # trailing comment\n";
  const auto d = sgdx::data::parse_libsvm_csr(text, "c.svm");
  EXPECT_EQ(d.rows(), 4);
  EXPECT_EQ(d.nnz(), 4);
  EXPECT_EQ(d.num_features, 4);
  EXPECT_TRUE(torch::equal(d.indptr, torch::tensor({0, 2, 3, 3, 4}, torch::kLong)));
  EXPECT_TRUE(torch::equal(d.indices, torch::tensor({0, 2, 1, 3}, torch::kLong)));
  EXPECT_TRUE(torch::equal(d.values, torch::tensor({0.5, -2.0, 1e-3, 7.0}, torch::kDouble)));
  EXPECT_TRUE(torch::equal(d.labels, torch::tensor({1.0, -1.0, -1.0, -1.0}, torch::kDouble)));
  const auto dense =
      torch::tensor({0.5, 0.0, -2.0, 0.0, 0.0, 1e-3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0},
                    torch::kDouble)
          .reshape({4, 4});
  EXPECT_TRUE(torch::equal(d.to_dense(), dense));
  EXPECT_TRUE(torch::equal(sgdx::data::parse_libsvm(text, "c.svm").features, dense));
  // Bad input is refused as by the dense reader (one parser).
  SGDX_EXPECT_THROW_MSG(sgdx::data::parse_libsvm_csr("1 3:1 2:1\n", "o.svm"),
                        "'o.svm' line 1: feature indices must increase, got 3 then 2");
}

// 10^4 rows over 10^6 features (10 non-zeros a row): the CSR holds 1.7 MB, where the
// dense matrix would be 80 GB (refused by name, not allocated).
TEST(LibsvmCsr, MemoryIsThatOfTheNonZerosWhateverTheFeatureCount) {
  TempDir dir;
  std::string text;
  const int64_t n = 10000, d = 1000000, per_row = 10;
  int64_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    text += (i % 2 != 0) ? "+1" : "-1";
    for (int64_t k = 0; k < per_row; ++k) {
      const int64_t idx = 1 + k * (d / per_row) + (i * 7919) % (d / per_row);
      text += " " + std::to_string(idx) + ":0.25";
      largest = std::max(largest, idx - 1);
    }
    text += "\n";
  }
  const auto path = dir.file("wide.svm.gz");
  write_text(path, text, /*gz=*/true);
  const auto csr = sgdx::data::read_libsvm_csr(path, d);
  EXPECT_EQ(csr.rows(), n);
  EXPECT_EQ(csr.nnz(), n * per_row);
  const auto bytes = [](const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); };
  const int64_t held = bytes(csr.indptr) + bytes(csr.indices) + bytes(csr.values) + bytes(csr.labels);
  EXPECT_LT(held, 2 * 1000 * 1000) << held;
  EXPECT_EQ(csr.indices.max().item<int64_t>(), largest);
  EXPECT_DOUBLE_EQ(csr.values.sum().item<double>(), 0.25 * double(n * per_row));
  SGDX_EXPECT_THROW_MSG(csr.to_dense(), "LIBSVM file '" + path + "' as a dense float64 matrix");
}

#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <zlib.h>

#include <cstdio>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

namespace sgdx::testing {

/// Expects `stmt` to throw c10::Error whose message contains `needle`.
#define SGDX_EXPECT_THROW_MSG(stmt, needle)                                              \
  do {                                                                                   \
    try {                                                                                \
      stmt;                                                                              \
      ADD_FAILURE() << "expected c10::Error containing '" << (needle) << "'";            \
    } catch (const c10::Error& e) {                                                      \
      EXPECT_NE(std::string(e.what_without_backtrace()).find(needle), std::string::npos) \
          << "message was: " << e.what_without_backtrace();                              \
    }                                                                                    \
  } while (0)

/// A fresh temporary directory, removed at destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::mt19937_64 rng(std::random_device{}());
    path = std::filesystem::temp_directory_path() / ("sgdx-test-" + std::to_string(rng()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes, bool gz) {
  if (gz) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

/// A CIFAR-10 directory `dir` of 5 training batches of `per_batch` random images
/// (labels i mod 10) and a test batch of `test` images, in the binary layout.
inline std::string write_tiny_cifar10(const std::filesystem::path& dir, int per_batch, int test) {
  std::mt19937 rng(5);
  auto records = [&](int n) {
    std::vector<uint8_t> b;
    for (int i = 0; i < n; ++i) {
      b.push_back(static_cast<uint8_t>(i % 10));
      for (int k = 0; k < 3 * 1024; ++k) b.push_back(static_cast<uint8_t>(rng() % 256));
    }
    return b;
  };
  std::filesystem::create_directories(dir);
  for (int i = 1; i <= 5; ++i)
    write_bytes((dir / ("data_batch_" + std::to_string(i) + ".bin")).string(), records(per_batch), false);
  write_bytes((dir / "test_batch.bin").string(), records(test), false);
  return dir.string();
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The bytes of an IDX file: header for `dims` of element type `type`, then `payload`.
inline std::vector<uint8_t> idx_bytes(uint8_t type, std::vector<uint32_t> dims,
                                      const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> b = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (auto d : dims) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(d >> s));
  }
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}

/// A tiny MNIST-family split: n images of h x w with pixel (i, k) = (i + k) % 256, label i % 10.
inline void write_mnist_split(const std::string& dir, const std::string& prefix, uint32_t n, uint32_t h,
                              uint32_t w, bool gz) {
  std::vector<uint8_t> pixels, labels;
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t k = 0; k < h * w; ++k) pixels.push_back(static_cast<uint8_t>((i + k) % 256));
    labels.push_back(static_cast<uint8_t>(i % 10));
  }
  const std::string sfx = gz ? ".gz" : "";
  write_bytes(dir + "/" + prefix + "-images-idx3-ubyte" + sfx, idx_bytes(0x08, {n, h, w}, pixels), gz);
  write_bytes(dir + "/" + prefix + "-labels-idx1-ubyte" + sfx, idx_bytes(0x08, {n}, labels), gz);
}

/// The exit code, stdout and stderr of `exe args` (stderr through a file in `dir`).
struct ProgramResult {
  int code = -1;
  std::string out, err;
};
inline ProgramResult run_program(const std::string& exe, const std::string& args, const TempDir& dir) {
  const std::string err_file = dir.file("stderr.txt");
  ProgramResult r;
  FILE* pipe = popen((exe + " " + args + " 2>" + err_file).c_str(), "r");
  char buf[4096];
  while (fgets(buf, sizeof(buf), pipe) != nullptr) r.out += buf;
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const auto err = read_bytes(err_file);
  r.err.assign(err.begin(), err.end());
  std::filesystem::remove(err_file);
  return r;
}

inline std::string data_dir() {
  const char* d = std::getenv("SGDX_DATA_DIR");
  return d != nullptr ? d : "";
}

}  // namespace sgdx::testing

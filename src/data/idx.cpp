#include "sgdx/data/idx.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <system_error>

namespace sgdx::data {
namespace {

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string limit_text(int64_t limit) {
  const bool from_env = std::getenv("SGDX_MAX_DATA_BYTES") != nullptr;
  return "the limit of " + std::to_string(limit) + " bytes (" +
         (from_env ? std::string("SGDX_MAX_DATA_BYTES")
                   : "physical memory; SGDX_MAX_DATA_BYTES overrides it") +
         ")";
}

std::string find_split_file(const std::string& dir, const std::string& stem) {
  for (const auto* suffix : {"", ".gz"}) {
    const auto p = std::filesystem::path(dir) / (stem + suffix);
    std::error_code ec;
    if (std::filesystem::exists(p, ec)) return p.string();
  }
  TORCH_CHECK(false, "dataset file '", (std::filesystem::path(dir) / stem).string(), "[.gz]' not found");
}

}  // namespace

int64_t max_dataset_bytes() {
  if (const char* env = std::getenv("SGDX_MAX_DATA_BYTES"); env != nullptr) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && errno == 0 && v > 0,
                "SGDX_MAX_DATA_BYTES must be a positive integer, got '", env, "'");
    return v;
  }
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  int64_t bytes = 0;
  if (pages <= 0 || page_size <= 0 || __builtin_mul_overflow(int64_t{pages}, int64_t{page_size}, &bytes))
    return std::numeric_limits<int64_t>::max();
  return bytes;
}

int64_t dense_bytes(const std::vector<int64_t>& dims, int64_t elem_size, const std::string& name) {
  // The strides (products of trailing dims, zeros counted as 1) must fit too.
  int64_t bytes = elem_size, stride = elem_size;
  bool overflow = false;
  for (const int64_t d : dims) {
    TORCH_CHECK(d >= 0, name, ": negative dimension in ", c10::IntArrayRef(dims));
    overflow |= __builtin_mul_overflow(bytes, d, &bytes);
    overflow |= __builtin_mul_overflow(stride, std::max<int64_t>(d, 1), &stride);
  }
  TORCH_CHECK(!overflow, name, ": dense storage of ", c10::IntArrayRef(dims), " x ", elem_size,
              "-byte elements overflows int64 (more than ", std::numeric_limits<int64_t>::max(), " bytes)");
  const int64_t limit = max_dataset_bytes();
  TORCH_CHECK(bytes <= limit, name, ": dense storage of ", c10::IntArrayRef(dims), " x ", elem_size,
              "-byte elements needs ", bytes, " bytes, more than ", limit_text(limit));
  return bytes;
}

std::vector<uint8_t> gunzip_if_gzip(std::vector<uint8_t> raw, const std::string& name) {
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
  const auto limit = static_cast<uint64_t>(max_dataset_bytes());
  z_stream zs{};
  TORCH_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "zlib init failed for '", name, "'");
  struct InflateEnd {
    z_stream* zs;
    ~InflateEnd() { inflateEnd(zs); }
  } guard{&zs};
  std::vector<uint8_t> out;
  out.reserve(std::min<uint64_t>(raw.size() * 4, limit));
  const uint8_t* next = raw.data();
  size_t left = raw.size();
  std::vector<uint8_t> buf(1 << 16);
  while (true) {
    if (zs.avail_in == 0 && left > 0) {  // avail_in is 32-bit: feed large inputs in pieces
      const auto chunk = static_cast<uInt>(std::min<size_t>(left, UINT_MAX));
      zs.next_in = const_cast<uint8_t*>(next);
      zs.avail_in = chunk;
      next += chunk;
      left -= chunk;
    }
    zs.next_out = buf.data();
    zs.avail_out = static_cast<uInt>(buf.size());
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const bool input_done = zs.avail_in == 0 && left == 0;
    // Z_BUF_ERROR: no progress possible, i.e. the input ended inside the stream.
    TORCH_CHECK(rc == Z_OK || rc == Z_STREAM_END || (rc == Z_BUF_ERROR && input_done), "'", name,
                "' is a corrupt gzip file (", zs.msg != nullptr ? zs.msg : "zlib error " + std::to_string(rc),
                ")");
    const size_t produced = buf.size() - zs.avail_out;
    TORCH_CHECK(out.size() + produced <= limit, "'", name, "' inflates to more than ",
                limit_text(static_cast<int64_t>(limit)));
    out.insert(out.end(), buf.data(), buf.data() + produced);
    if (rc == Z_STREAM_END) {
      if (input_done) break;
      // Another gzip member follows (as `cat a.gz b.gz > c.gz` makes).
      TORCH_CHECK(inflateReset(&zs) == Z_OK, "zlib reset failed for '", name, "'");
      continue;
    }
    TORCH_CHECK(!(input_done && zs.avail_out != 0), "'", name,
                "' is a truncated gzip file (stream ends after ", out.size(), " decompressed bytes)");
  }
  return out;
}

std::vector<uint8_t> read_file_maybe_gz(const std::string& path, const std::string& kind) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  TORCH_CHECK(std::filesystem::exists(status), "cannot open ", kind, " '", path, "' (",
              ec ? ec.message() : "no such file", ")");
  TORCH_CHECK(!std::filesystem::is_directory(status), kind, " '", path, "' is a directory, not a file");
  const int64_t limit = max_dataset_bytes();
  if (std::filesystem::is_regular_file(status)) {
    const auto size = std::filesystem::file_size(path, ec);
    TORCH_CHECK(ec || size <= static_cast<uint64_t>(limit), kind, " '", path, "' has ", size,
                " bytes, more than ", limit_text(limit));
  }
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.is_open(), "cannot open ", kind, " '", path, "' (", std::generic_category().message(errno),
              ")");
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), "error reading ", kind, " '", path, "' after ", raw.size(), " bytes");
  return gunzip_if_gzip(std::move(raw), path);
}

at::Tensor parse_idx(const std::vector<uint8_t>& bytes, const std::string& name) {
  TORCH_CHECK(bytes.size() >= 4, "IDX file '", name, "' is too short (", bytes.size(),
              " bytes) to hold a header");
  TORCH_CHECK(bytes[0] == 0 && bytes[1] == 0, "IDX file '", name, "' has a bad magic number (first bytes ",
              int(bytes[0]), ", ", int(bytes[1]), "; expected 0, 0)");
  const uint8_t type = bytes[2];
  const int ndim = bytes[3];
  at::ScalarType dtype;
  size_t elem = 0;
  switch (type) {
    case 0x08:
      dtype = at::kByte;
      elem = 1;
      break;
    case 0x09:
      dtype = at::kChar;
      elem = 1;
      break;
    case 0x0B:
      dtype = at::kShort;
      elem = 2;
      break;
    case 0x0C:
      dtype = at::kInt;
      elem = 4;
      break;
    case 0x0D:
      dtype = at::kFloat;
      elem = 4;
      break;
    case 0x0E:
      dtype = at::kDouble;
      elem = 8;
      break;
    default:
      TORCH_CHECK(false, "IDX file '", name, "' has unknown element type 0x", std::hex, int(type));
  }
  TORCH_CHECK(ndim >= 1, "IDX file '", name, "' declares 0 dimensions");
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  TORCH_CHECK(bytes.size() >= header, "IDX file '", name, "' is truncated inside its header (", bytes.size(),
              " bytes, header needs ", header, ")");
  std::vector<int64_t> dims(ndim);
  for (size_t d = 0; d < dims.size(); ++d) dims[d] = read_be32(bytes.data() + 4 + 4 * d);
  // Refuses sizes that overflow or exceed memory before comparing with the file.
  const auto data_bytes =
      static_cast<uint64_t>(dense_bytes(dims, static_cast<int64_t>(elem), "IDX file '" + name + "'"));
  const uint64_t expected = header + data_bytes;
  TORCH_CHECK(bytes.size() == expected, "IDX file '", name, "' has ", bytes.size(), " bytes but its header (",
              c10::IntArrayRef(dims), ") implies ", expected,
              bytes.size() < expected ? " (truncated)" : " (trailing data)");
  auto t = at::empty(dims, at::TensorOptions().dtype(dtype));
  auto* dst = static_cast<uint8_t*>(t.data_ptr());
  const uint8_t* src = bytes.data() + header;
  if (elem == 1) {
    if (data_bytes > 0) std::memcpy(dst, src, data_bytes);
  } else {
    const size_t count = data_bytes / elem;
    for (size_t i = 0; i < count; ++i)  // IDX is big-endian
      for (size_t b = 0; b < elem; ++b) dst[i * elem + b] = src[i * elem + (elem - 1 - b)];
  }
  return t;
}

at::Tensor read_idx(const std::string& path) {
  return parse_idx(read_file_maybe_gz(path, "IDX file"), path);
}

ImageSet load_mnist_family(const std::string& dir, bool train) {
  std::error_code ec;
  TORCH_CHECK(std::filesystem::is_directory(dir, ec), "MNIST-family data directory '", dir, "' ",
              std::filesystem::exists(dir, ec) ? "is not a directory" : "not found");
  const std::string prefix = train ? "train" : "t10k";
  const auto images_path = find_split_file(dir, prefix + "-images-idx3-ubyte");
  const auto labels_path = find_split_file(dir, prefix + "-labels-idx1-ubyte");
  auto images = read_idx(images_path);
  auto labels = read_idx(labels_path);
  TORCH_CHECK(images.dim() == 3 && images.scalar_type() == at::kByte, "'", images_path,
              "' must hold uint8 images [N, H, W], got ", images.scalar_type(), " ", images.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kByte, "'", labels_path,
              "' must hold uint8 labels [N], got ", labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(images.size(0) > 0, "'", images_path, "' holds no images (", images.sizes(), ")");
  TORCH_CHECK(images.size(1) > 0 && images.size(2) > 0, "'", images_path, "' holds images of ",
              images.size(1), " x ", images.size(2), " pixels");
  TORCH_CHECK(images.size(0) == labels.size(0), "'", images_path, "' has ", images.size(0), " images but '",
              labels_path, "' has ", labels.size(0), " labels");
  const auto max_label = labels.max().item<int64_t>();
  TORCH_CHECK(max_label <= 9, "'", labels_path, "' has a label ", max_label, " outside 0..9");
  dense_bytes({images.size(0), 1, images.size(1), images.size(2)}, 4, "'" + images_path + "' as float32");
  return {images.unsqueeze(1).to(at::kFloat).div_(255.0), labels.to(at::kLong)};
}

}  // namespace sgdx::data

#include "sgdx/data/idx.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

namespace sgdx::data {
namespace {

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string find_split_file(const std::string& dir, const std::string& stem) {
  for (const auto* suffix : {"", ".gz"}) {
    const auto p = std::filesystem::path(dir) / (stem + suffix);
    if (std::filesystem::exists(p)) return p.string();
  }
  TORCH_CHECK(false, "dataset file '", (std::filesystem::path(dir) / stem).string(),
              "[.gz]' not found");
}

}  // namespace

std::vector<uint8_t> read_file_maybe_gz(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "cannot open '", path, "'");
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;

  z_stream zs{};
  TORCH_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, "zlib init failed for '", path, "'");
  std::vector<uint8_t> out;
  out.reserve(raw.size() * 4);
  zs.next_in = raw.data();
  zs.avail_in = static_cast<uInt>(raw.size());
  int rc = Z_OK;
  uint8_t buf[1 << 16];
  while (rc != Z_STREAM_END) {
    zs.next_out = buf;
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string msg = zs.msg ? zs.msg : (rc == Z_BUF_ERROR ? "unexpected end of data" : "error");
      inflateEnd(&zs);
      TORCH_CHECK(false, "'", path, "' is a corrupt or truncated gzip file (", msg, ")");
    }
    out.insert(out.end(), buf, buf + (sizeof(buf) - zs.avail_out));
    if (rc != Z_STREAM_END && zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      TORCH_CHECK(false, "'", path, "' is a truncated gzip file (stream ends after ", out.size(),
                  " decompressed bytes)");
    }
  }
  inflateEnd(&zs);
  return out;
}

at::Tensor parse_idx(const std::vector<uint8_t>& bytes, const std::string& name) {
  TORCH_CHECK(bytes.size() >= 4, "IDX file '", name, "' is too short (", bytes.size(),
              " bytes) to hold a header");
  TORCH_CHECK(bytes[0] == 0 && bytes[1] == 0, "IDX file '", name,
              "' has a bad magic number (first bytes ", int(bytes[0]), ", ", int(bytes[1]),
              "; expected 0, 0)");
  const uint8_t type = bytes[2];
  const int ndim = bytes[3];
  at::ScalarType dtype;
  size_t elem = 0;
  switch (type) {
    case 0x08: dtype = at::kByte; elem = 1; break;
    case 0x09: dtype = at::kChar; elem = 1; break;
    case 0x0B: dtype = at::kShort; elem = 2; break;
    case 0x0C: dtype = at::kInt; elem = 4; break;
    case 0x0D: dtype = at::kFloat; elem = 4; break;
    case 0x0E: dtype = at::kDouble; elem = 8; break;
    default: TORCH_CHECK(false, "IDX file '", name, "' has unknown element type 0x", std::hex, int(type));
  }
  TORCH_CHECK(ndim >= 1, "IDX file '", name, "' declares 0 dimensions");
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  TORCH_CHECK(bytes.size() >= header, "IDX file '", name, "' is truncated inside its header (",
              bytes.size(), " bytes, header needs ", header, ")");
  std::vector<int64_t> dims(ndim);
  size_t count = 1;
  for (int d = 0; d < ndim; ++d) {
    dims[d] = read_be32(bytes.data() + 4 + 4 * d);
    count *= static_cast<size_t>(dims[d]);
  }
  const size_t expected = header + count * elem;
  TORCH_CHECK(bytes.size() == expected, "IDX file '", name, "' has ", bytes.size(),
              " bytes but its header (", c10::IntArrayRef(dims), ") implies ", expected,
              bytes.size() < expected ? " (truncated)" : " (trailing data)");
  auto t = at::empty(dims, at::TensorOptions().dtype(dtype));
  auto* dst = static_cast<uint8_t*>(t.data_ptr());
  const uint8_t* src = bytes.data() + header;
  if (elem == 1) {
    std::memcpy(dst, src, count);
  } else {
    for (size_t i = 0; i < count; ++i)  // IDX is big-endian
      for (size_t b = 0; b < elem; ++b) dst[i * elem + b] = src[i * elem + (elem - 1 - b)];
  }
  return t;
}

at::Tensor read_idx(const std::string& path) { return parse_idx(read_file_maybe_gz(path), path); }

ImageSet load_mnist_family(const std::string& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const auto images_path = find_split_file(dir, prefix + "-images-idx3-ubyte");
  const auto labels_path = find_split_file(dir, prefix + "-labels-idx1-ubyte");
  auto images = read_idx(images_path);
  auto labels = read_idx(labels_path);
  TORCH_CHECK(images.dim() == 3 && images.scalar_type() == at::kByte, "'", images_path,
              "' must hold uint8 images [N, H, W], got ", images.scalar_type(), " ",
              images.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kByte, "'", labels_path,
              "' must hold uint8 labels [N], got ", labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(images.size(0) == labels.size(0), "'", images_path, "' has ", images.size(0),
              " images but '", labels_path, "' has ", labels.size(0), " labels");
  TORCH_CHECK(labels.numel() == 0 || labels.max().item<int64_t>() <= 9, "'", labels_path,
              "' has a label ", labels.max().item<int64_t>(), " outside 0..9");
  return {images.unsqueeze(1).to(at::kFloat).div_(255.0), labels.to(at::kLong)};
}

}  // namespace sgdx::data

// libFuzzer harness for the CIFAR-10 reader: read_cifar10_batch's own path (gunzip, then parse).
#include "fuzz_common.h"
#include "sgdx/data/cifar10.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto bytes = sgdx::data::gunzip_if_gzip({data, data + size}, "fuzz.bin");
    const auto b = sgdx::data::parse_cifar10_batch(bytes, "fuzz.bin");
    const int64_t n = b.labels.size(0);
    SGDX_FUZZ_ASSERT(n >= 1 && n * sgdx::data::kCifar10RecordBytes == static_cast<int64_t>(bytes.size()));
    SGDX_FUZZ_ASSERT(b.images.sizes() == at::IntArrayRef({n, 3, 32, 32}));
    SGDX_FUZZ_ASSERT(b.labels.min().item<int64_t>() >= 0 && b.labels.max().item<int64_t>() <= 9);
  } catch (const c10::Error&) {
  }
  return 0;
}

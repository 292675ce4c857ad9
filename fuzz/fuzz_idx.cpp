// libFuzzer harness for the IDX reader: read_idx's own path (gunzip, then parse) on the input bytes.
#include "fuzz_common.h"
#include "sgdx/data/idx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto bytes = sgdx::data::gunzip_if_gzip({data, data + size}, "fuzz.idx");
    const auto t = sgdx::data::parse_idx(bytes, "fuzz.idx");
    // Accepted: the header (4 + 4 per dim) and the elements account for every byte.
    SGDX_FUZZ_ASSERT(t.dim() >= 1 && 4 + 4 * static_cast<size_t>(t.dim()) + t.nbytes() == bytes.size());
  } catch (const c10::Error&) {
  }
  return 0;
}

// libFuzzer harness for the LIBSVM reader: read_libsvm's own path (gunzip, then parse).
#include <ATen/ATen.h>

#include "fuzz_common.h"
#include "sgdx/data/idx.h"
#include "sgdx/data/libsvm.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto bytes = sgdx::data::gunzip_if_gzip({data, data + size}, "fuzz.svm");
    const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    const auto d = sgdx::data::parse_libsvm(text, "fuzz.svm");
    SGDX_FUZZ_ASSERT(d.features.dim() == 2 && d.features.size(0) >= 1 && d.features.size(1) >= 1);
    SGDX_FUZZ_ASSERT(d.labels.size(0) == d.features.size(0));
    SGDX_FUZZ_ASSERT(at::isfinite(d.features).all().item<bool>());
    SGDX_FUZZ_ASSERT(d.labels.abs().eq(1).all().item<bool>());
  } catch (const c10::Error&) {
  }
  return 0;
}

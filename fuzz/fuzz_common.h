#pragma once
// Shared by the libFuzzer harnesses: a c10::Error is the reader's expected
// rejection of bad input; anything else (a crash, a sanitizer report, another
// exception, a hang, an allocation over libFuzzer's limit) is a finding.
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

// Readers refuse data sets larger than this before they allocate; it stays well
// under libFuzzer's default 2 GB malloc limit.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("SGDX_MAX_DATA_BYTES", "67108864", 1);
  return 0;
}

// An accepted input that breaks an invariant the reader promises.
#define SGDX_FUZZ_ASSERT(cond)                                                           \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

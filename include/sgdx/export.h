#pragma once
// SGDX_API marks sgdx's public API. The library is compiled with hidden
// visibility (CMake: CXX_VISIBILITY_PRESET hidden), so a shared build exports
// only what carries this mark; a static build is unaffected.
#if defined(_WIN32)
#define SGDX_API
#else
#define SGDX_API __attribute__((visibility("default")))
#endif

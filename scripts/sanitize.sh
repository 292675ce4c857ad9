#!/usr/bin/env bash
# Builds sgdx, its examples and its test suite with AddressSanitizer and
# UndefinedBehaviorSanitizer (gcc) in build-asan/ and runs ctest there. Every
# sanitizer report, from a test or from a program a test starts, is written to
# build-asan/sanitizer-logs/ and listed at the end; exit status 1 on any failing
# test or report. LibTorch itself is not instrumented. Extra arguments go to ctest
# (e.g. -R 'Idx|Libsvm'). Slow: the first build takes ~45 min on 2 cores.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
asan="${SGDX_ASAN_BUILD_DIR:-$root/build-asan}"
"$root/scripts/setup.sh" >/dev/null

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# The host code is instrumented; CUDA kernels (compiled when LibTorch has CUDA,
# SGDX_ENABLE_CUDA=OFF notwithstanding) are not, and their tests skip without a GPU.
# A CUDA LibTorch probes nvcc when sgdx does not enable CUDA itself: a fixed arch list
# and C++17 for CUDA let that probe pass.
mkdir -p "$asan"
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" cmake -S "$root" -B "$asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
  -DCMAKE_SHARED_LINKER_FLAGS="$san" -DSGDX_ENABLE_CUDA=OFF -DCMAKE_CUDA_STANDARD=17 -DSGDX_BUILD_BENCH=OFF \
  >"$asan/configure.log" 2>&1 || { cat "$asan/configure.log"; exit 1; }
status=0
# A target that fails to build is reported and its tests fail; the rest still run.
keep_going=(-k)
[[ -f "$asan/build.ninja" ]] && keep_going=(-k 0)
if ! cmake --build "$asan" -j"$(nproc)" -- "${keep_going[@]}"; then
  status=1
  echo "sanitize: some targets failed to build (above); running the tests that did build"
fi

logs="$asan/sanitizer-logs"
rm -rf "$logs" && mkdir -p "$logs"
# detect_leaks=0: LibTorch keeps its global registries alive until exit.
# protect_shadow_gap=0: the CUDA driver, if LibTorch loads one, maps memory there.
# alloc_dealloc_mismatch / new_delete_type_mismatch: LibTorch's uninstrumented
# operators new/delete pair differently from the instrumented ones.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:log_path=$logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$logs/ubsan"
cd "$asan"
ctest --output-on-failure -j"$(nproc)" --timeout 3600 "$@" 2>&1 | tee "$asan/ctest.log" || status=1

echo
echo "sanitize: $(grep -E 'tests passed' "$asan/ctest.log" || echo 'no ctest summary')"
reports=("$logs"/*)
if [[ -e "${reports[0]}" ]]; then
  status=1
  echo "sanitize: ${#reports[@]} sanitizer report(s) in $logs:"
  for r in "${reports[@]}"; do
    echo "--- $r"
    grep -m1 -E 'ERROR: AddressSanitizer|runtime error:' "$r" || true
    grep -m1 -E '^SUMMARY:' "$r" || true
  done
else
  echo "sanitize: no AddressSanitizer / UndefinedBehaviorSanitizer reports"
fi
exit "$status"

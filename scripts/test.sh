#!/usr/bin/env bash
# Builds sgdx and runs the whole test suite (CUDA tests skip without a GPU).
# Data under ../shared/data is used when SGDX_DATA_DIR points there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh"  # runs scripts/setup.sh first: every tool below is installed
"$root/scripts/format_check.sh"
"$root/scripts/tidy.sh"  # clang-tidy on src/ and examples/ (~20 min on 2 cores; see the script)
cd "$build"
ctest --output-on-failure -j"$(nproc)" --timeout 900
if command -v clang++ >/dev/null; then
  "$root/scripts/fuzz.sh" 20  # the data readers under libFuzzer + ASan/UBSan, 20 s each
else
  echo "test: clang++ not found, skipping the reader fuzzers (scripts/setup.sh installs clang)"
fi
"$root/scripts/test_consumer.sh"

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
# The Python package against the library built above, and its tests (pytest; the
# package needs the project's .venv, which a run with SGDX_LIBTORCH does not have).
if [[ -x "$root/.venv/bin/python" ]]; then
  "$root/scripts/install_python.sh"
  cd "$root/python/tests" && "$root/.venv/bin/python" -m pytest -q -p no:cacheprovider .
else
  echo "test: no .venv (SGDX_LIBTORCH): skipping the Python package"
fi

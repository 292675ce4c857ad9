#!/usr/bin/env bash
# Builds sgdx and runs the whole test suite (CUDA tests skip without a GPU).
# Data under ../shared/data is used when SGDX_DATA_DIR points there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SGDX_BUILD_DIR:-$root/build}"
if [[ -z "${SGDX_DATA_DIR:-}" && -d "$root/../shared/data" ]]; then
  export SGDX_DATA_DIR="$(cd "$root/../shared/data" && pwd)"
fi
"$root/scripts/build.sh"
cd "$build"
ctest --output-on-failure -j"$(nproc)" --timeout 900
"$root/scripts/test_consumer.sh"

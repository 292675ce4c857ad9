#!/usr/bin/env bash
# Builds sgdx and runs the whole test suite (CUDA tests skip without a GPU).
# Data under ../shared/data is used when SGDX_DATA_DIR points there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh"
cd "$build"
ctest --output-on-failure -j"$(nproc)" --timeout 900
"$root/scripts/test_consumer.sh"

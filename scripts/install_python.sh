#!/usr/bin/env bash
# Installs the Python package (import sgdx) into the project's .venv against the C++
# library that scripts/build.sh built in build/, so that only the bindings compile
# here (CI). The README's plain `pip install --no-build-isolation .` compiles the
# library as well and gives the same package.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
python="${SGDX_PYTHON:-$root/.venv/bin/python}"
prefix="$build/python-prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
# --no-deps: torch is already there (2.11.0, pinned); pip must not replace it.
"$python" -m pip install -q --no-build-isolation --no-deps "$root" \
  -Ccmake.define.SGDX_PREFIX="$prefix" -Cbuild-dir="$build/python-ext"

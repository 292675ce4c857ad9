#!/usr/bin/env bash
# Installs the built sgdx into a temporary prefix and builds + runs an outside
# CMake project that does find_package(sgdx) and links sgdx::sgdx.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
torch_prefix="$(grep -E '^Torch_DIR:' "$build/CMakeCache.txt" | cut -d= -f2-)"
# The exported package names LibTorch's imported targets, never a path of this machine.
torch_root="$(cd "$torch_prefix/../../.." && pwd)"
if grep -lF -e "$torch_root" -e "$root/" "$work/prefix"/lib*/cmake/sgdx/*.cmake >&2; then
  echo "consumer: the installed sgdx package names $torch_root or $root (above)" >&2
  exit 1
fi
cmake -S "$root/tests/consumer" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DTorch_DIR="$torch_prefix" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j"$(nproc)" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$work/build/consumer"

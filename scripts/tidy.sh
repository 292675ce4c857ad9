#!/usr/bin/env bash
# Runs clang-tidy 14 (.clang-tidy) over sgdx's own C++ sources, src/ and examples/
# (.cpp; the CUDA files are left to nvcc), with the build folder's
# compile_commands.json, and exits 1 on any finding. Extra arguments go to
# run-clang-tidy (e.g. -fix, or -j1 while something else builds).
# Cost: every file parses LibTorch's headers (~5 s) and the checks walk their whole
# AST (10-40 s more). Measured on this project's 2-core Xeon (AVX-512), nothing else
# running: 59 files in 1225 s (20 min) at -j2, inside CI's 90-minute budget (the rest
# of CI takes ~23 min). Checking a few changed files: pass their paths' regexes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"
tidy="$(command -v run-clang-tidy-14 || command -v run-clang-tidy || true)"
[[ -n "$tidy" ]] || { echo "tidy: run-clang-tidy not found (Debian: apt-get install clang-tidy)" >&2; exit 1; }
[[ -f "$build/compile_commands.json" ]] ||
  { echo "tidy: $build/compile_commands.json missing; scripts/build.sh configures it" >&2; exit 1; }
mapfile -t files < <(find src examples -name '*.cpp' | sort)
start=$SECONDS
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# run-clang-tidy takes regular expressions: anchor each path at both ends.
patterns=("${files[@]/#/^$root/}")
"$tidy" -quiet -p "$build" -j"$(nproc)" "$@" "${patterns[@]/%/\$}" 2>&1 | sed -E 's/\x1b\[[0-9;]*m//g' >"$log" ||
  status=$?
findings="$(grep -cE '^/.*: (warning|error): ' "$log" || true)"
if ((status != 0 || findings != 0)); then
  grep -vE '^(clang-tidy-14 |[0-9]+ warnings? (and [0-9]+ errors? )?generated|Suppressed [0-9]+ warnings|Use -header-filter|Error while processing)' \
    "$log" >&2 || true
  echo "tidy: $findings findings in ${#files[@]} files ($((SECONDS - start)) s); fix them in the code" >&2
  exit 1
fi
echo "tidy: ${#files[@]} files clean ($((SECONDS - start)) s)"

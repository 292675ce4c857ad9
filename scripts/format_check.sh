#!/usr/bin/env bash
# Checks that every C++ and CUDA source follows .clang-format (clang-format 14, Debian's
# clang-format package): prints the files that differ and exits 1. With --fix, formats them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$root"
command -v clang-format >/dev/null || { echo "format: clang-format not found (Debian: apt-get install clang-format)" >&2; exit 1; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.cpp' '*.h' '*.cu' '*.cuh')
else
  mapfile -t files < <(find include src cuda tests examples bench fuzz -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
fi
if [[ "${1:-}" == --fix ]]; then
  clang-format -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
  printf 'format: %s differs from .clang-format\n' "${bad[@]}" >&2
  echo "format: ${#bad[@]} of ${#files[@]} files differ; scripts/format_check.sh --fix formats them" >&2
  exit 1
fi
echo "format: all ${#files[@]} C++/CUDA files follow .clang-format"

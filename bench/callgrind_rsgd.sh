#!/usr/bin/env bash
# Instruction counts of one optimizer step (valgrind callgrind), a measure that does
# not depend on the machine's load: torch::optim::SGD (momentum) and sgdx's RSGD with
# and without per-element draws, from bench_rsgd_step (ResNet-18 parameter set, one
# thread, 2 timed reps + 3 warm-up + 1 first step = 6 steps of each).
# valgrind cannot run AVX-512: the avx2 (default) or baseline variant is measured, with
# LibTorch held to AVX2 too.
#   bench/callgrind_rsgd.sh [BUILD_DIR] [avx2|baseline]      (~6 min)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
isa="${2:-avx2}"
bench="$build/bench/bench_rsgd_step"
[[ -x "$bench" ]] || { echo "callgrind_rsgd: no $bench (build it first)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "callgrind_rsgd: valgrind not found (Debian: apt-get install valgrind)" >&2; exit 1; }
[[ "$isa" == avx2 || "$isa" == baseline ]] || { echo "callgrind_rsgd: variant must be avx2 or baseline, got '$isa'" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 SGDX_CPU_ISA="$isa" SGDX_BENCH_ISA=active \
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bench" "$work/bench.json" 2 >"$work/log" 2>&1 ||
  { tail -20 "$work/log" >&2; exit 1; }
callgrind_annotate --inclusive=yes "$work/cg.out" >"$work/annotated"
count() { grep -F "$1" "$work/annotated" | head -1 | awk '{gsub(",", "", $1); print $1}'; }
steps=6
sgd=$(count "torch::optim::SGD::step(")
tiles=$(count "tiles_${isa}<float>")
update=$(count "update_${isa}<float>")
[[ -n "$sgd" && -n "$tiles" && -n "$update" ]] || { echo "callgrind_rsgd: symbols not found in the profile" >&2; exit 1; }
# update_* runs in both RSGD configurations; the rest of tiles_* is the draws.
awk -v sgd="$sgd" -v tiles="$tiles" -v update="$update" -v n="$steps" -v isa="$isa" 'BEGIN {
  s = sgd / n; nodraw = update / (2 * n); draws = (tiles - update) / n
  printf "variant %s, instructions per step (millions):\n", isa
  printf "  torch::optim::SGD momentum   %8.1f\n", s / 1e6
  printf "  RSGD kernel, no draws        %8.1f  (%.2fx SGD)\n", nodraw / 1e6, nodraw / s
  printf "  RSGD kernel, element draws   %8.1f  (%.2fx SGD; draws %.1f)\n", (nodraw + draws) / 1e6, (nodraw + draws) / s, draws / 1e6
}'

#!/usr/bin/env bash
# Per-sample gradient norms, batch 128, CPU: sgdx vs its Python peers (torch.func,
# Opacus GradSampleModule, Opacus ghost clipping, BackPACK BatchL2Grad) in one run.
#
# Runs build/bench/bench_per_sample (sgdx), then bench/peers/per_sample_peers.py
# with the thread count sgdx ran with, and merges both into one table (stdout)
# and one JSON.
#
# Usage: bench/peers/run.sh [OUT_JSON] [REPS]
#   OUT_JSON  default bench/results/per_sample_peers_cpu.json (or $OUT)
#   REPS      timed rounds per candidate, default 15 (or $REPS)
# Environment:
#   THREADS    intra-op threads for both sides (sets OMP_NUM_THREADS); default:
#              LibTorch's default, which the peers then copy
#   BUILD_DIR  default build;  PYTHON  default .venv/bin/python
#   MODELS     peers' models, default mlp,cnn,resnet (sgdx always runs all three)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-${OUT:-$ROOT/bench/results/per_sample_peers_cpu.json}}
REPS=${2:-${REPS:-15}}
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
MODELS=${MODELS:-mlp,cnn,resnet}
BENCH=$BUILD_DIR/bench/bench_per_sample
PIP_CMD="$ROOT/.venv/bin/pip install -r $ROOT/bench/peers/requirements.txt"

die() { echo "run.sh: $*" >&2; exit 1; }

[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer, got '$REPS'"
[[ -x "$BENCH" ]] || die "missing $BENCH: build it first
  (cmake -S $ROOT -B $BUILD_DIR -DCMAKE_BUILD_TYPE=Release && cmake --build $BUILD_DIR --target bench_per_sample)"
[[ -x "$PYTHON" ]] || die "missing Python $PYTHON (the project's venv; set PYTHON=... to use another)"
if ! "$PYTHON" -c 'import torch, opacus, backpack' 2>/dev/null; then
  die "the peers are not installed in $PYTHON; install them (torch pinned, so it is not changed) with:
  $PIP_CMD
  or: $ROOT/.venv/bin/pip install \"torch==2.11.0\" opacus==1.6.0 backpack-for-pytorch==1.7.1"
fi
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)
case "$torch_version" in
  2.11.0|2.11.0+*) ;;
  *) die "Python torch is $torch_version, expected 2.11.0 (the LibTorch sgdx links against); reinstall with:
  $PIP_CMD" ;;
esac

if [[ -n "${THREADS:-}" ]]; then
  [[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "THREADS must be a positive integer, got '$THREADS'"
  export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
fi

mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== sgdx: $BENCH (reps $REPS)"
"$BENCH" "$tmp/sgdx.json" "$REPS"
threads=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["threads"])' "$tmp/sgdx.json")

echo
echo "== peers: per_sample_peers.py (reps $REPS, $threads threads, as sgdx)"
"$PYTHON" "$ROOT/bench/peers/per_sample_peers.py" --reps "$REPS" --threads "$threads" --models "$MODELS" \
  --sgdx-json "$tmp/sgdx.json" --out "$OUT"

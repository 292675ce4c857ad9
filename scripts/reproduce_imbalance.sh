#!/usr/bin/env bash
# Reproduction for docs/results/imbalance.md: long-tailed Fashion-MNIST and MNIST
# (class sizes n_0 * 100^(-c/9), test sets unchanged), MLP, SGD+momentum 0.9,
# lr 0.01, batch 128, 20 epochs, 3 seeds.
#  1. scalarization (S) vs temperature sampling (TS) at tau = 2, 3, 5:
#     minibatch gradient-norm variance and convergence;
#  2. Cooldown (tau 5 -> 1 at half of the steps) vs static tau = 1, 5, 100.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh" >/dev/null
out="$root/docs/results/imbalance"
mkdir -p "$out"
datasets=(fashion-mnist)
[[ -d "${SGDX_DATA_DIR:-/nonexistent}/mnist" ]] && datasets+=(mnist) || echo "skipping mnist: \$SGDX_DATA_DIR/mnist not found"
common=(--model mlp --imbalance 100 --epochs 20 --seeds 3 --no-progress)
for ds in "${datasets[@]}"; do
  echo "== $ds: S vs TS"
  "$build/examples/sgdx-train" --dataset "$ds" "${common[@]}" --out "$out/$ds-ts-vs-s" \
    --compare sgdm@ts:2,sgdm@scalarize:2,sgdm@ts:3,sgdm@scalarize:3,sgdm@ts:5,sgdm@scalarize:5 | grep '^|'
  echo "== $ds: Cooldown vs static tau"
  "$build/examples/sgdx-train" --dataset "$ds" "${common[@]}" --out "$out/$ds-cooldown" \
    --compare sgdm@none,sgdm@ts:1,sgdm@ts:5,sgdm@ts:100,sgdm@cooldown:5 | grep '^|'
done

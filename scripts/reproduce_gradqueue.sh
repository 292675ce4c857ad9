#!/usr/bin/env bash
# Reproduction for docs/results/gradqueue.md: batch-size sweep (32 ... 4096) of
# SGD-momentum vs GradQueue-SGDM, plain and clustered (K = 2, 4, 8, fast path),
# MLP on Fashion-MNIST and MNIST, 5 epochs, 3 seeds, lr = 0.01 * sqrt(B / 32)
# for every method (momentum 0.9, constant schedule). CIFAR-10 is run too when
# $SGDX_DATA_DIR/cifar10 exists. Then the plot and table (summarize_gradqueue.py).
# Usage: scripts/reproduce_gradqueue.sh [epochs] [seeds] [batch sizes...]
# (SGDX_TRAIN=/path/to/sgdx-train runs that binary instead of building one.)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ -z "${SGDX_TRAIN:-}" ]]; then
  "$root/scripts/build.sh" >/dev/null
  SGDX_TRAIN="$build/examples/sgdx-train"
fi
epochs="${1:-5}"
seeds="${2:-3}"
shift $(( $# > 2 ? 2 : $# ))
batches=("$@")
[[ ${#batches[@]} -gt 0 ]] || batches=(32 128 512 1024 2048 4096)
out="$root/docs/results/gradqueue"
mkdir -p "$out"
datasets=(fashion-mnist)
[[ -d "${SGDX_DATA_DIR:-/nonexistent}/mnist" ]] && datasets+=(mnist) || echo "skipping mnist: \$SGDX_DATA_DIR/mnist not found"
[[ -d "${SGDX_DATA_DIR:-/nonexistent}/cifar10" ]] && datasets+=(cifar10) || echo "skipping cifar10: \$SGDX_DATA_DIR/cifar10 not found"
for ds in "${datasets[@]}"; do
  model=mlp
  [[ "$ds" == cifar10 ]] && model=cnn
  for b in "${batches[@]}"; do
    lr=$(python3 -c "print(f'{0.01 * ($b / 32) ** 0.5:.6g}')")
    echo "== $ds $model batch $b lr $lr"
    "$SGDX_TRAIN" --dataset "$ds" --model "$model" --epochs "$epochs" --seeds "$seeds" \
      --batch-size "$b" --lr "$lr" --no-progress --no-plot \
      --compare sgdm,gqsgdm,gqsgdm-k2,gqsgdm-k4,gqsgdm-k8 --out "$out/$ds-$model-b$b" | grep '^| [sg]'
  done
done
python3 "$root/scripts/summarize_gradqueue.py" "$out"

#!/usr/bin/env bash
# Reproduction for docs/results/importance_sampling.md: uniform vs importance
# sampling with loss, upper-bound (K&F) and exact-gradient-norm scores (cached per
# example, eps = 0.1), and K&F presampling (ratio 3, upper-bound scores), under
# SGD, SGD+momentum and Adam; MLP on Fashion-MNIST and MNIST (10 epochs, 3 seeds)
# and the CNN on Fashion-MNIST (SGD+momentum, 3 epochs, 1 seed). Time counts
# every forward pass the method makes (scoring included), not evaluation.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh" >/dev/null
out="$root/docs/results/importance"
mkdir -p "$out"
datasets=(fashion-mnist)
[[ -d "${SGDX_DATA_DIR:-/nonexistent}/mnist" ]] && datasets+=(mnist) || echo "skipping mnist: \$SGDX_DATA_DIR/mnist not found"
for ds in "${datasets[@]}"; do
  for opt in sgd sgdm adam; do
    echo "== $ds mlp $opt"
    "$build/examples/sgdx-train" --dataset "$ds" --model mlp --epochs 10 --seeds 3 --no-progress \
      --compare "$opt,$opt+loss,$opt+upper-bound,$opt+exact" --out "$out/$ds-mlp-$opt" | grep '^|'
    "$build/examples/sgdx-train" --dataset "$ds" --model mlp --epochs 10 --seeds 3 --no-progress --presample 3 \
      --compare "$opt+upper-bound" --out "$out/$ds-mlp-$opt-presample" | grep '^| '"$opt"
  done
done
echo "== fashion-mnist cnn sgdm"
"$build/examples/sgdx-train" --dataset fashion-mnist --model cnn --epochs 3 --seeds 1 --no-progress \
  --compare sgdm,sgdm+loss,sgdm+upper-bound,sgdm+exact --out "$out/fashion-mnist-cnn-sgdm" | grep '^|'
"$build/examples/sgdx-train" --dataset fashion-mnist --model cnn --epochs 3 --seeds 1 --no-progress --presample 3 \
  --compare sgdm+upper-bound --out "$out/fashion-mnist-cnn-sgdm-presample" | grep '^| sgdm'
python3 "$root/scripts/summarize_runs.py" "$out"/*/metrics.csv > "$out/summary.md"
cat "$out/summary.md"

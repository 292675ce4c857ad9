#!/usr/bin/env bash
# Reproduction for docs/results/rsgd.md: R-SGD vs SGD, SGD+momentum 0.9,
# Nesterov and Adam, same model, data, batch size and number of steps, 3 seeds,
# with a constant learning rate and with a per-step cosine decay.
# Tasks: Fashion-MNIST (MLP), MNIST (MLP; needs $SGDX_DATA_DIR/mnist) and the
# synthetic teacher-student task. Writes docs/results/rsgd/<task>-<schedule>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh" >/dev/null
out="$root/docs/results/rsgd"
mkdir -p "$out"
optimizers=sgd,sgdm,nesterov,adam,rsgd
run() {  # name dataset epochs schedule
  "$build/examples/sgdx-train" --dataset "$2" --model mlp --compare "$optimizers" --epochs "$3" --seeds 3 \
    --schedule "$4" --rsgd-max-prob 1 --no-progress --out "$out/$1-$4" | tail -n 9  # the literal reading, as committed
}
for schedule in constant cosine; do
  run fashion-mnist fashion-mnist 10 "$schedule"
  if [[ -d "${SGDX_DATA_DIR:-/nonexistent}/mnist" ]]; then
    run mnist mnist 10 "$schedule"
  else
    echo "skipping mnist: \$SGDX_DATA_DIR/mnist not found"
  fi
  run teacher teacher 30 "$schedule"
done

# Supplement: R-SGD's lr and max_prob on Fashion-MNIST (constant lr, 3 seeds).
for lr in 0.01 0.03 0.1; do
  for mp in 1.0 0.9; do
    "$build/examples/sgdx-train" --dataset fashion-mnist --model mlp --optimizer rsgd --lr "$lr" --rsgd-max-prob "$mp" \
      --epochs 10 --seeds 3 --no-progress --no-plot --out "$out/sweep/lr$lr-maxprob$mp" | grep '^| rsgd' |
      sed "s/^| rsgd |/| rsgd lr=$lr max_prob=$mp |/"
  done
done
# ... and on the teacher-student task (30 epochs) with max_prob 0.9.
for lr in 0.03 0.1; do
  "$build/examples/sgdx-train" --dataset teacher --model mlp --optimizer rsgd --lr "$lr" --rsgd-max-prob 0.9 \
    --epochs 30 --seeds 3 --no-progress --no-plot --out "$out/sweep/teacher-lr$lr-maxprob0.9" | grep '^| rsgd' |
    sed "s/^| rsgd |/| rsgd teacher lr=$lr max_prob=0.9 |/"
done

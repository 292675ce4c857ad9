#!/usr/bin/env bash
# The main job: builds sgdx, then compares SGD, SGD+momentum, R-SGD and Adam on
# Fashion-MNIST (MLP, 10 epochs, 3 seeds; about a minute on 2 CPU cores). Prints the table
# and writes runs/fashion-mnist-mlp/{metrics.csv,metrics.json,summary.md,training.png}.
# Extra arguments go to sgdx-train (see: build/examples/sgdx-train --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$root/scripts/build.sh" >/dev/null
exec "$build/examples/sgdx-train" --dataset fashion-mnist --model mlp --compare sgd,sgdm,rsgd,adam --epochs 10 --seeds 3 "$@"

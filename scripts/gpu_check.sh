#!/usr/bin/env bash
# On a machine with a CUDA GPU and a CUDA LibTorch (e.g. a lent device, whose
# python3 has torch): builds sgdx against that torch, runs the CUDA tests and
# the GPU benchmarks, and writes logs and JSON to ${OUT:-bench/results}; then
# docs/results/cuda.md is generated from them (scripts/summarize_cuda.py).
# The training-throughput comparison needs MNIST IDX files in
# ${SGDX_DATA_DIR:-.data}/mnist (copy ../shared/data/mnist to .data/mnist, which
# git ignores, and carry it to the device); it is skipped without them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench/results}"
build="$root/build-gpu"
mkdir -p "$out"
python="${SGDX_PYTHON:-python3}"
prefix="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" >"$out/configure.log" 2>&1 ||
  { tail -50 "$out/configure.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
status=0
(cd "$build" && ctest --output-on-failure -R 'Cuda|RSGD|GradQueue|PerSample|KMeans' 2>&1 | tee "$out/ctest_cuda.log" | tail -25) ||
  status=1
grep -q "tests passed, 0 tests failed" "$out/ctest_cuda.log" || status=1
"$build/bench/bench_rsgd_step_cuda" "$out/rsgd_step_cuda.json" || status=1
"$build/bench/bench_gradqueue_cuda" "$out/gradqueue_step_cuda.json" || status=1
"$build/bench/bench_per_sample_cuda" "$out/per_sample_cuda.json" || status=1
"$build/bench/bench_kmeans_cuda" "$out/kmeans_cuda.json" || status=1
data="${SGDX_DATA_DIR:-$root/.data}/mnist"
if [[ -e "$data/train-images-idx3-ubyte.gz" || -e "$data/train-images-idx3-ubyte" ]]; then
  "$root/scripts/bench_train_gpu.sh" "$build" "$data" "$out" || status=1
else
  echo "gpu_check: no MNIST in $data: training throughput comparison skipped"
fi
"$python" "$root/scripts/summarize_cuda.py" "$out" "$root/docs/results/cuda.md" && cp "$root/docs/results/cuda.md" "$out/cuda.md" || status=1
exit $status

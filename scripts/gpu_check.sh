#!/usr/bin/env bash
# On a machine with a CUDA GPU and a CUDA LibTorch (e.g. a lent device, whose
# python3 has torch): builds sgdx against that torch, runs the CUDA tests and
# the GPU benchmarks, and writes logs and JSON to ${OUT:-bench/results}.
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
(cd "$build" && ctest --output-on-failure -R 'Cuda|RSGD|GradQueue' 2>&1 | tee "$out/ctest_cuda.log" | tail -15)
"$build/bench/bench_rsgd_step_cuda" "$out/rsgd_step_cuda.json"
"$build/bench/bench_gradqueue_cuda" "$out/gradqueue_step_cuda.json"

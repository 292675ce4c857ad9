#!/usr/bin/env bash
# Prints "<kernel> <sha256>" for each CUDA kernel's sources in this tree, the
# hash cmake/SgdxKernelHashes.cmake compiles in (used to write
# cuda/verified_kernels.txt after a GPU run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
declare -A cu=([rsgd_step]=cuda/rsgd_step.cu [gradqueue_step]=cuda/gradqueue_step.cu
               [gradqueue_cluster_stats]=cuda/gradqueue_cluster.cu [kmeans]=cuda/kmeans.cu
               [per_sample_norms]=cuda/per_sample_norms.cu)
for k in rsgd_step gradqueue_step gradqueue_cluster_stats kmeans per_sample_norms; do
  h=$( { echo "${cu[$k]}"; ls cuda/*.cuh include/sgdx/detail/*.h; } | LC_ALL=C sort |
       while read -r f; do printf '%s %s\n' "$f" "$(sha256sum "$f" | cut -d' ' -f1)"; done | sha256sum | cut -d' ' -f1)
  echo "$k $h"
done

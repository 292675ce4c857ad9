#!/usr/bin/env bash
# Starts N local ranks of a program without torchrun: each gets MASTER_ADDR=127.0.0.1,
# a free MASTER_PORT, RANK and WORLD_SIZE, and writes to this terminal (sgdx-train's
# ranks other than 0 print only their errors). Ctrl-C or SIGTERM is passed to every rank
# (sgdx-train then stops them all at one step with a checkpoint); a rank that fails makes
# the others fail in their next collective. The exit status is the first non-zero one.
# Usage: scripts/dist_local.sh N build/examples/sgdx-train [ARGS...]
set -u
if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N PROGRAM [ARGS...]   (N local ranks of PROGRAM, as torchrun starts them)" >&2
  exit 2
fi
n=$1
shift
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || exit 1
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; }
trap 'stop' INT TERM
for ((r = 0; r < n; r++)); do
  MASTER_ADDR=127.0.0.1 MASTER_PORT=$port RANK=$r WORLD_SIZE=$n SGDX_RUN_ID="local-$port" \
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$@" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do
  wait "$p"
  s=$?
  if [[ $s -ne 0 && $status -eq 0 ]]; then status=$s; fi
done
exit $status

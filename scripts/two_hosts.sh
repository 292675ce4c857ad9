#!/usr/bin/env bash
# Two hosts on one machine: two network namespaces joined by a veth pair, rank 0 in
# one (it hosts the store on its veth address), rank 1 in the other, so every byte
# between the ranks crosses a real (virtual) link and nothing can reach the other
# rank through 127.0.0.1. Stages: (1) test_dist's two-rank collective and
# DataParallel test bodies as the ranks; (2) a short sgdx-train run across the
# namespaces; (3) with --bench, bench/bench_dist across them. While the ranks run,
# their listening sockets are sampled (ss -ltnp in each namespace): a listener on a
# wildcard address (0.0.0.0, ::, *) fails the script.
#
# Needs root and iproute2; exits 77 (ctest's skip) saying why where namespaces
# cannot be made. The whole run is limited to SGDX_TWO_HOSTS_TIMEOUT_S (120) seconds;
# the namespaces are removed on every exit path.
#
# Usage: scripts/two_hosts.sh [--test-dist[=]EXE] [--train[=]EXE | --no-train] [--bench[=EXE]]
#   (defaults under $SGDX_BUILD_DIR or build/: tests/test_dist, examples/sgdx-train,
#    bench/bench_dist; without sgdx-train stage 2 is skipped, saying so)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

limit="${SGDX_TWO_HOSTS_TIMEOUT_S:-120}"
if [[ -z "${SGDX_TWO_HOSTS_LIMITED:-}" ]] && command -v timeout >/dev/null; then
  # SIGTERM first so the trap below removes the namespaces; SIGKILL 15 s later.
  SGDX_TWO_HOSTS_LIMITED=1 exec timeout --kill-after=15 "$limit" bash "$0" "$@"
fi

test_dist="$build/tests/test_dist"
train="$build/examples/sgdx-train"
bench=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --test-dist) test_dist="$2"; shift 2 ;;
    --test-dist=*) test_dist="${1#--test-dist=}"; shift ;;
    --train) train="$2"; shift 2 ;;
    --train=*) train="${1#--train=}"; shift ;;
    --no-train) train=""; shift ;;
    --bench) bench="$build/bench/bench_dist"; shift ;;
    --bench=*) bench="${1#--bench=}"; shift ;;
    *) echo "two_hosts: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

say() { echo "two_hosts: $*"; }
skip() { say "SKIPPED: $*"; exit 77; }
die() { say "FAILED: $*"; exit 1; }

[[ "$(id -u)" == 0 ]] || skip "needs root to make network namespaces (running as uid $(id -u))"
command -v ip >/dev/null || skip "iproute2's 'ip' is not installed"
command -v ss >/dev/null || skip "iproute2's 'ss' is not installed"
[[ -x "$test_dist" ]] || die "test_dist not found at $test_dist (build it, or pass --test-dist)"

# Names unique to this run (interface names: at most 15 characters).
ns_a="sgdx-$$-a"
ns_b="sgdx-$$-b"
veth_a="sgdx$$a"
veth_b="sgdx$$b"
addr_a=10.77.0.1
addr_b=10.77.0.2
work="$(mktemp -d "${TMPDIR:-/tmp}/sgdx-two-hosts.XXXXXX")"
pids=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # TERM first: each rank runs under timeout(1), which passes it on to the rank.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  [[ ${#pids[@]} -gt 0 ]] && sleep 0.5
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ip netns del "$ns_a" 2>/dev/null || true  # deleting a namespace deletes its veth end
  ip netns del "$ns_b" 2>/dev/null || true
  ip link del "$veth_a" 2>/dev/null || true  # only if the move into the namespace failed
  if [[ "${SGDX_TWO_HOSTS_KEEP:-0}" == 1 ]]; then say "kept logs in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted (time limit ${limit} s?)"; exit 124' INT TERM

if ! err="$(ip netns add "$ns_a" 2>&1)"; then
  skip "cannot make network namespaces here (ip netns add: $err)"
fi
ip netns add "$ns_b" 2>/dev/null || skip "cannot make a second network namespace"
if ! err="$(ip link add "$veth_a" type veth peer name "$veth_b" 2>&1)"; then
  skip "cannot make a veth pair here (ip link add: $err)"
fi
ip link set "$veth_a" netns "$ns_a"
ip link set "$veth_b" netns "$ns_b"
ip -n "$ns_a" addr add "$addr_a/24" dev "$veth_a"
ip -n "$ns_b" addr add "$addr_b/24" dev "$veth_b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$veth_a" up
ip -n "$ns_b" link set "$veth_b" up
say "namespaces $ns_a ($addr_a) and $ns_b ($addr_b) joined by $veth_a/$veth_b"

# The ranks' listening sockets, sampled while a stage runs: "ns local-address process".
listeners="$work/listeners.txt"
: >"$listeners"
sample_listeners() {
  local ns
  for ns in "$ns_a" "$ns_b"; do
    ip netns exec "$ns" ss -ltnpH 2>/dev/null | awk -v ns="$ns" '{print ns, $4, $6}' >>"$listeners" || true
  done
}

# run_ranks NAME SECONDS CMD...: rank 0 in A (hosting the store on addr_a), rank 1 in B,
# each bound to its own veth address; sampling listeners until both exit.
run_ranks() {
  local name="$1" seconds="$2"
  shift 2
  local port=29500 rank ns addr rc=0
  pids=()
  for rank in 0 1; do
    if [[ $rank == 0 ]]; then ns="$ns_a" addr="$addr_a"; else ns="$ns_b" addr="$addr_b"; fi
    ip netns exec "$ns" env MASTER_ADDR="$addr_a" MASTER_PORT="$port" RANK="$rank" WORLD_SIZE=2 \
      SGDX_RUN_ID="two-hosts-$$-$name" SGDX_DIST_BIND_ADDR="$addr" SGDX_DIST_TIMEOUT_S=30 OMP_NUM_THREADS=1 \
      SGDX_TEST_RANK_CHILD=1 timeout -k 5 "$seconds" "$@" >"$work/$name.rank$rank.log" 2>&1 &
    pids+=($!)
  done
  while kill -0 "${pids[0]}" 2>/dev/null || kill -0 "${pids[1]}" 2>/dev/null; do
    sample_listeners
    sleep 0.05
  done
  for rank in 0 1; do
    if ! wait "${pids[$rank]}"; then
      rc=1
      say "$name: rank $rank failed; its output:"
      sed 's/^/    /' "$work/$name.rank$rank.log" | tail -n 40
    fi
  done
  pids=()
  return $rc
}

# (1) Collectives and DataParallel against one-process references, as two ranks.
filter='DistCollectives.TwoRanks:DistDataParallel.TwoRanks*'
run_ranks test_dist 60 "$test_dist" --gtest_filter="$filter" || die "test_dist ($filter) across the namespaces"
grep -h '^\[  PASSED  \]' "$work/test_dist.rank0.log" | sed "s/^/two_hosts: test_dist rank 0: /"

# (2) A short data-parallel training run, against one process on the same global batch
# (every rank takes the step one process takes on the whole batch: same test loss).
if [[ -x "$train" ]]; then
  train_args=(--dataset teacher --model mlp --epochs 2 --train-subset 2048 --batch-size 64 --device cpu --threads 1
    --no-progress --no-plot)
  run_ranks train 60 "$train" "${train_args[@]}" --out "$work/train" || die "sgdx-train across the namespaces"
  [[ -s "$work/train/metrics.json" ]] || die "sgdx-train: rank 0 wrote no $work/train/metrics.json"
  if grep -q '^metrics:' "$work/train.rank1.log"; then
    die "sgdx-train rank 1 wrote metrics too: it trained alone (WORLD_SIZE ignored?)"
  fi
  grep -E '^\| sgd ' "$work/train.rank0.log" | sed "s/^/two_hosts: sgdx-train, two ranks: /" || true
  ip netns exec "$ns_a" env OMP_NUM_THREADS=1 timeout 60 "$train" "${train_args[@]}" --out "$work/train1" \
    >"$work/train1.log" 2>&1 || die "sgdx-train in one process: $(tail -n 5 "$work/train1.log")"
  if command -v python3 >/dev/null; then
    python3 - "$work/train/metrics.json" "$work/train1/metrics.json" <<'PY' || die "two ranks and one process differ"
import json, sys
two, one = (json.load(open(p))["runs"][0]["epochs"][-1]["test_loss"] for p in sys.argv[1:3])
print(f"two_hosts: test loss after 2 epochs: two ranks {two:.6f}, one process {one:.6f}")
sys.exit(0 if abs(two - one) <= 1e-3 * max(1.0, abs(one)) else 1)
PY
  else
    say "python3 not found: the two-rank and one-process losses were not compared"
  fi
else
  say "stage 2 skipped: no sgdx-train${train:+ at $train} (--no-train, or SGDX_BUILD_EXAMPLES off)"
fi

# (3) Optional: the data-parallel benchmark across the link.
if [[ -n "$bench" ]]; then
  [[ -x "$bench" ]] || die "bench_dist not found at $bench"
  run_ranks bench 90 "$bench" "$work/bench_dist.json" 10 mlp || die "bench_dist across the namespaces"
  sed 's/^/two_hosts: bench_dist rank 0: /' "$work/bench.rank0.log"
  [[ -n "${SGDX_TWO_HOSTS_BENCH_OUT:-}" ]] && cp "$work/bench_dist.json" "$SGDX_TWO_HOSTS_BENCH_OUT"
fi

# Exposure: every listener the ranks opened, and none on a wildcard address.
sort -u "$listeners" -o "$listeners"
if [[ ! -s "$listeners" ]]; then
  say "NOTE: no listening socket was sampled (the ranks ran too briefly to see one)"
else
  say "listening sockets seen while the ranks ran (namespace, address:port, process):"
  sed 's/^/    /' "$listeners"
  if awk '$2 ~ /^(0\.0\.0\.0|\*|\[::\]|\[::ffff:0\.0\.0\.0\]):/ {found=1} END {exit !found}' "$listeners"; then
    die "a rank listens on a wildcard address (reachable from every interface; see above)"
  fi
fi
say "PASSED: ranks in two network namespaces over $addr_a <-> $addr_b"

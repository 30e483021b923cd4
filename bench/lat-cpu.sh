#!/usr/bin/env bash
# One paced run against a fresh router: the load's p50 / p99 (µs) and the router's CPU
# ticks per thread kind (shards, storage thread, ...) over its life. For A/B of what a
# message costs at a low rate (wake-ups), run it alternately on each build.
#
#   bench/lat-cpu.sh ROUTER ["router args"] ["load args"]
#   bench/lat-cpu.sh target/release/ringrouter "" "--pairs 1 --size 64 --rate 10000 --duration 3"  # (the default)
#   LOAD=path/to/ringrouter-load bench/lat-cpu.sh A
set -euo pipefail
RR=$1; RA=${2:-}; LA=${3:-"--pairs 1 --size 64 --rate 10000 --duration 3"}
LOAD=${LOAD:-target/release/ringrouter-load}
T=$(mktemp -d)
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086
"$RR" --listen 127.0.0.1:"$P" --http-listen off --shards "${SHARDS:-2}" --data-dir "$T/data" $RA >"$T/out" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$T"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$T/out" 2>/dev/null && break; sleep 0.05; done
# shellcheck disable=SC2086
"$LOAD" --addr 127.0.0.1:"$P" --protocol ringrouter $LA --json >"$T/j"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('p50 %.0f p99 %.0f lost %d' % (d['p50_us'], d['p99_us'], d['lost']), end=' ')" "$T/j"
for t in /proc/$PID/task/*; do echo "$(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done \
  | awk '{n=$1; sub(/-[0-9]+$/, "", n); u[n]+=$2} END {for (k in u) if (u[k] > 0) printf "%s=%d ", k, u[k]; print "(CPU ticks)"}'

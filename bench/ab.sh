#!/usr/bin/env bash
# A/B: alternate two router binaries under the same load, print msgs/s per run.
# usage: bench/ab.sh BIN_A BIN_B [runs] [load args...]
set -euo pipefail
# Routers that have an HTTP port (--http-listen, default 127.0.0.1:7880) get none here, so
# runs never collide on it; older binaries (A/B) have no such flag.
no_http() { if "$1" --help 2>/dev/null | grep -q -- --http-listen; then echo "--http-listen off"; fi; }
A=$1; B=$2; RUNS=${3:-3}; shift 3 || true
LOAD=${LOAD:-target/release/ringrouter-load}
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(--pairs 16 --size 64 --messages 3000000)
run() {
  local bin=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local out; out=$(mktemp)
  # A fresh store per run (binaries from before the store have no --data-dir).
  local data=(); local dir=""
  if "$bin" --help 2>/dev/null | grep -q -- --data-dir; then dir=$(mktemp -d); data=(--data-dir "$dir"); fi
  "$bin" --listen 127.0.0.1:$port $(no_http "$bin") "${data[@]}" $ROUTER_ARGS >"$out" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do grep -q "listening on" "$out" && break; sleep 0.02; done
  rm -f "$out"
  "$LOAD" --addr 127.0.0.1:$port "${ARGS[@]}" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["msgs_per_sec"]), "lost", d["lost"], "p50", round(d["p50_us"]), "p99", round(d["p99_us"]))'
  kill $pid; wait $pid 2>/dev/null || true
  [ -n "$dir" ] && rm -rf "$dir"
  return 0
}
ROUTER_ARGS=${ROUTER_ARGS:-}
for i in $(seq "$RUNS"); do
  echo "A $(run "$A")"
  echo "B $(run "$B")"
done

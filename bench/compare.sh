#!/usr/bin/env bash
# Side-by-side: the same load shape against ringrouter and nats-server, in
# alternation, on loopback. Prints a Markdown table of medians and the ratio
# ringrouter / nats-server. Installs nats-server from Debian if it is missing.
#
#   bench/compare.sh                # default scenarios, 3 runs each
#   RUNS=5 SHARDS=2 bench/compare.sh
#   SCENARIOS="pairs16_64" bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SHARDS=${SHARDS:-2}
SCENARIOS=${SCENARIOS:-"pairs16_64 pairs16_1k pairs256_64 latency_10k"}
ROUTER_ARGS=${ROUTER_ARGS:-}

if ! command -v nats-server >/dev/null 2>&1; then
  echo "installing nats-server (Debian package)..." >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi

cargo build --release -q -p ringrouter -p ringrouter-bench
RR=target/release/ringrouter
LOAD=target/release/ringrouter-load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RR_PID=""; NATS_PID=""; TMP=$(mktemp -d)
cleanup() {
  [ -n "$RR_PID" ] && kill "$RR_PID" 2>/dev/null || true
  [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

RR_PORT=$(free_port)
# shellcheck disable=SC2086
"$RR" --listen 127.0.0.1:"$RR_PORT" --shards "$SHARDS" --data-dir "$TMP/data" $ROUTER_ARGS >"$TMP/rr.out" 2>"$TMP/rr.err" &
RR_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$TMP/rr.out" 2>/dev/null && break; sleep 0.05; done
grep -q "listening on" "$TMP/rr.out" || { cat "$TMP/rr.err" >&2; exit 1; }

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null && break; sleep 0.05; done

args_for() {
  case "$1" in
    pairs16_64)   echo "--pairs 16 --size 64 --messages 3000000" ;;
    pairs16_1k)   echo "--pairs 16 --size 1024 --messages 1000000" ;;
    pairs256_64)  echo "--pairs 256 --size 64 --messages 3000000" ;;
    latency_10k)  echo "--pairs 1 --size 64 --rate 10000 --duration 5" ;;
    fanout64)     echo "--fanout 64 --size 64 --messages 100000" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

for sc in $SCENARIOS; do
  # shellcheck disable=SC2046
  for i in $(seq "$RUNS"); do
    "$LOAD" --addr 127.0.0.1:"$RR_PORT" $(args_for "$sc") --json >>"$TMP/$sc.rr.jsonl"
    "$LOAD" --addr 127.0.0.1:"$NATS_PORT" --protocol nats $(args_for "$sc") --json >>"$TMP/$sc.nats.jsonl"
    echo "  $sc run $i done" >&2
  done
done

python3 - "$TMP" "$SCENARIOS" "$SHARDS" "$RUNS" <<'PY'
import json, statistics, sys, os
tmp, scen, shards, runs = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
def load(p):
    return [json.loads(l) for l in open(p) if l.strip()]
def med(rows, k):
    return statistics.median(r[k] for r in rows)
print(f"ringrouter ({shards} shards) vs nats-server, loopback, median of {runs} runs, "
      f"load generator on the same {os.cpu_count()}-core machine\n")
print("| scenario | ringrouter msgs/s | nats-server msgs/s | ratio | ringrouter p50 / p99 µs | nats-server p50 / p99 µs | lost (rr/nats) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for sc in scen:
    rr, na = load(f"{tmp}/{sc}.rr.jsonl"), load(f"{tmp}/{sc}.nats.jsonl")
    a, b = med(rr, "msgs_per_sec"), med(na, "msgs_per_sec")
    print(f"| {sc} | {a:,.0f} | {b:,.0f} | {a/b:.2f}x | {med(rr,'p50_us'):.0f} / {med(rr,'p99_us'):.0f} "
          f"| {med(na,'p50_us'):.0f} / {med(na,'p99_us'):.0f} | {sum(r['lost'] for r in rr)}/{sum(r['lost'] for r in na)} |")
PY

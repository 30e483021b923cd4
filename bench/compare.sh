#!/usr/bin/env bash
# Side-by-side: the same load shape against ringrouter and nats-server (and,
# if asked, redis-server pub/sub), in alternation, on loopback. Prints a
# Markdown table of medians and the ratios ringrouter / nats-server (and
# ringrouter / redis). Installs nats-server (and redis-server) from Debian if
# missing.
#
#   bench/compare.sh                # default scenarios, 3 runs each, no redis
#   RUNS=5 SHARDS=2 bench/compare.sh
#   SCENARIOS="pairs16_64" bench/compare.sh
#   REDIS=1 SCENARIOS="fanout64 fanout1000" bench/compare.sh   # redis too
#   SCENARIOS="redis fanout64" bench/compare.sh                # same as REDIS=1
#
# Scenarios: pairs16_64 pairs16_1k pairs256_64 latency_10k (the default list),
# fanout64 and fanout1000 (one sender to 64 / 1000 receivers: through a room on
# ringrouter, one channel on redis, 64 / 1000 subjects on nats).
# redis-server runs with persistence off, on a free loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SHARDS=${SHARDS:-2}
DEFAULT_SCENARIOS="pairs16_64 pairs16_1k pairs256_64 latency_10k"
SCENARIOS=${SCENARIOS:-$DEFAULT_SCENARIOS}
ROUTER_ARGS=${ROUTER_ARGS:-}
REDIS=${REDIS:-0}

# "redis" in the scenario list turns redis on; it is not a scenario itself.
scen=""
for s in $SCENARIOS; do
  if [ "$s" = redis ]; then REDIS=1; else scen="$scen $s"; fi
done
SCENARIOS=${scen# }
[ -n "$SCENARIOS" ] || SCENARIOS=$DEFAULT_SCENARIOS
case "$REDIS" in 0|"") REDIS=0 ;; *) REDIS=1 ;; esac

args_for() {
  case "$1" in
    pairs16_64)   echo "--pairs 16 --size 64 --messages 3000000" ;;
    pairs16_1k)   echo "--pairs 16 --size 1024 --messages 1000000" ;;
    pairs256_64)  echo "--pairs 256 --size 64 --messages 3000000" ;;
    latency_10k)  echo "--pairs 1 --size 64 --rate 10000 --duration 5" ;;
    fanout64)     echo "--fanout 64 --size 64 --messages 100000" ;;
    fanout1000)   echo "--fanout 1000 --size 64 --messages 10000" ;;
    *) return 1 ;;
  esac
}
for sc in $SCENARIOS; do
  args_for "$sc" >/dev/null || { echo "unknown scenario $sc" >&2; exit 2; }
done

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
  echo "installing $1 (Debian package)..." >&2
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$1" >/dev/null
}
command -v nats-server >/dev/null 2>&1 || apt_install nats-server
if [ "$REDIS" = 1 ]; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
fi

cargo build --release -q -p ringrouter -p ringrouter-bench
RR=target/release/ringrouter
LOAD=target/release/ringrouter-load

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # name port pid log
  for _ in $(seq 100); do
    (echo > /dev/tcp/127.0.0.1/"$2") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.05
  done
  echo "$1 did not start listening on port $2:" >&2; cat "$4" >&2; exit 1
}

RR_PID=""; NATS_PID=""; REDIS_PID=""; TMP=$(mktemp -d)
cleanup() {
  for pid in $RR_PID $NATS_PID $REDIS_PID; do kill "$pid" 2>/dev/null || true; done
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
wait_port nats-server "$NATS_PORT" "$NATS_PID" "$TMP/nats.log"

TARGETS="rr nats"
if [ "$REDIS" = 1 ]; then
  REDIS_PORT=$(free_port)
  mkdir -p "$TMP/redis"
  # No persistence; bound to loopback (protected mode only refuses other hosts).
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize no --dir "$TMP/redis" >"$TMP/redis.log" 2>&1 &
  REDIS_PID=$!
  wait_port redis-server "$REDIS_PORT" "$REDIS_PID" "$TMP/redis.log"
  TARGETS="rr nats redis"
fi

# One run of scenario $1 against target $2; the JSON report goes to its file.
# A failed run is reported and the table counts what it got; a lossy run
# (exit 1) still prints its report.
run_one() {
  local proto addr rc=0
  case "$2" in
    rr)    proto=ringrouter; addr=127.0.0.1:$RR_PORT ;;
    nats)  proto=nats;       addr=127.0.0.1:$NATS_PORT ;;
    redis) proto=redis;      addr=127.0.0.1:$REDIS_PORT ;;
  esac
  # shellcheck disable=SC2046
  "$LOAD" --addr "$addr" --protocol "$proto" $(args_for "$1") --json >>"$TMP/$1.$2.jsonl" 2>>"$TMP/$1.$2.err" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "  $1 against $proto: exit $rc: $(tail -n 1 "$TMP/$1.$2.err")" >&2
  fi
}

for sc in $SCENARIOS; do
  for i in $(seq "$RUNS"); do
    for t in $TARGETS; do run_one "$sc" "$t"; done
    echo "  $sc run $i done" >&2
  done
done

python3 - "$TMP" "$SCENARIOS" "$SHARDS" "$RUNS" "$TARGETS" <<'PY'
import json, statistics, sys, os
tmp, scen, shards, runs, targets = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5].split()
redis = "redis" in targets
def load(sc, t):
    p = f"{tmp}/{sc}.{t}.jsonl"
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]
def med(rows, k):
    return statistics.median(r[k] for r in rows) if rows else None
def rate(rows):
    m = med(rows, "msgs_per_sec")
    return "failed" if m is None else f"{m:,.0f}"
def ratio(a, b):
    a, b = med(a, "msgs_per_sec"), med(b, "msgs_per_sec")
    return "-" if not a or not b else f"{a/b:.2f}x"
def lat(rows):
    return "-" if not rows else f"{med(rows,'p50_us'):.0f} / {med(rows,'p99_us'):.0f}"
def lost(rows):
    return str(sum(r["lost"] for r in rows)) + ("" if len(rows) == int(runs) else f" ({int(runs)-len(rows)} failed)")
vs = "nats-server and redis-server" if redis else "nats-server"
print(f"ringrouter ({shards} shards) vs {vs}, loopback, median of {runs} runs, "
      f"load generator on the same {os.cpu_count()}-core machine\n")
if redis:
    print("| scenario | ringrouter msgs/s | nats-server msgs/s | redis msgs/s | ratio rr/nats | ratio rr/redis "
          "| ringrouter p50 / p99 µs | nats-server p50 / p99 µs | redis p50 / p99 µs | lost (rr/nats/redis) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
else:
    print("| scenario | ringrouter msgs/s | nats-server msgs/s | ratio | ringrouter p50 / p99 µs | nats-server p50 / p99 µs | lost (rr/nats) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
for sc in scen:
    rr, na, re = load(sc, "rr"), load(sc, "nats"), load(sc, "redis")
    if redis:
        print(f"| {sc} | {rate(rr)} | {rate(na)} | {rate(re)} | {ratio(rr, na)} | {ratio(rr, re)} "
              f"| {lat(rr)} | {lat(na)} | {lat(re)} | {lost(rr)}/{lost(na)}/{lost(re)} |")
    else:
        print(f"| {sc} | {rate(rr)} | {rate(na)} | {ratio(rr, na)} | {lat(rr)} | {lat(na)} | {lost(rr)}/{lost(na)} |")
PY

#!/usr/bin/env bash
# Side-by-side: the same load shape against ringrouter, nats-server and
# redis-server pub/sub, in alternation (rr, nats, redis; rr, nats, redis; ...),
# on loopback. Each server is driven by the most efficient client
# ringrouter-load has for its protocol: ringrouter Sends batched per write;
# NATS PUBs batched into ~64 KiB writes (no flush per message, MSG frames
# parsed in place); Redis PUBLISHes pipelined into ~64 KiB writes, with
# `CLIENT REPLY OFF` (the publisher reads no replies; REDIS_REPLY=on: replies
# read in bulk). Installs nats-server and redis-server from Debian if missing.
#
# Prints a Markdown table per scenario: msgs/s per server (median, min-max over
# the runs), the ratios rr/nats and rr/redis (median of the per-run ratios and
# their min-max, run i of ringrouter against run i of the other server), each
# server's CPU seconds per million deliveries (utime + stime of the server
# process from /proc/PID/stat over the measured phase, from the first send to the
# last delivery: ringrouter-load --server-pid reads it; logins and room joins are
# left out) and the load generator's (its client_cpu_s, getrusage over the same span).
# A second table has latencies.
#
#   bench/compare.sh                          # default scenarios, 3 runs each
#   RUNS=5 SHARDS=2 bench/compare.sh
#   SCENARIOS="pairs16_64 fanout64" bench/compare.sh
#   SCENARIOS="default fanout" bench/compare.sh   # the default list plus fan-out
#   REDIS=0 bench/compare.sh                  # without redis
#   REDIS_REPLY=on bench/compare.sh           # redis publishers read their replies
#   WINDOW=1000 bench/compare.sh              # in-flight window per pair (pairs scenarios)
#   FANOUT_WINDOW=4000 bench/compare.sh       # in-flight window of the fan-out sender
#   LOAD_ARGS="--threads 1" bench/compare.sh  # extra ringrouter-load flags, every target
#   ROUTER_ARGS="--history-per-conversation 0" bench/compare.sh   # extra router flags
#   SCALE=3 bench/compare.sh                  # every scenario's message count (and the paced
#                                             # ones' duration) times 3: runs of ~3 s instead
#                                             # of ~1 s, less start-up in the figures
#   RR=/path/ringrouter LOAD=/path/ringrouter-load bench/compare.sh   # these binaries, no build
#   RR_KEEP=1 bench/compare.sh                # one router for every scenario (default: a
#                                             # fresh one, and data directory, per scenario)
#
# Scenarios (pairs: P sender/receiver pairs, each its own two users / subject / channel):
#   pairs1_64 pairs1_1k pairs16_64 pairs16_1k pairs256_64 pairs256_1k
#   latency_10k         1 pair at 10k msgs/s, 64 B: p50 / p99
#   latency_10k_split   the same, ringrouter only, the pair's two users on different
#                       shards (--split-shards; nats/redis have no shards: see latency_10k)
#   fanout64 fanout1000 one sender to 64 / 1000 receivers: through a room on
#                       ringrouter, one channel on redis, one subject on nats
# "default" = pairs1_64 pairs16_64 pairs16_1k pairs256_64 latency_10k latency_10k_split;
# "fanout" = fanout64 fanout1000; "all" = every scenario.
# redis-server runs with persistence off, on a free loopback port.
set -euo pipefail
# Routers that have an HTTP port (--http-listen, default 127.0.0.1:7880) get none here, so
# runs never collide on it; older binaries (A/B) have no such flag.
no_http() { if "$1" --help 2>/dev/null | grep -q -- --http-listen; then echo "--http-listen off"; fi; }
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SHARDS=${SHARDS:-2}
DEFAULT_SCENARIOS="pairs1_64 pairs16_64 pairs16_1k pairs256_64 latency_10k latency_10k_split"
FANOUT_SCENARIOS="fanout64 fanout1000"
ALL_SCENARIOS="pairs1_64 pairs1_1k pairs16_64 pairs16_1k pairs256_64 pairs256_1k latency_10k latency_10k_split fanout64 fanout1000"
SCENARIOS=${SCENARIOS:-$DEFAULT_SCENARIOS}
ROUTER_ARGS=${ROUTER_ARGS:-}
LOAD_ARGS=${LOAD_ARGS:-}
REDIS=${REDIS:-1}
REDIS_REPLY=${REDIS_REPLY:-off}
# In-flight window per pair in the throughput scenarios, the same for every
# server. The engine's default (1000) starves nats-server: it flushes to a
# subscriber per read, and 1000 messages in flight make small reads (measured:
# nats 1.7M msgs/s at 16 x 64 B with 1000, 2.1-2.5M with 16000, as much as the
# raw reference client bench/src/bin/nats-raw.rs without any window;
# ringrouter the same with either).
PAIR_WINDOW="--window ${WINDOW:-16000}"
# Fan-out: the engine's default window (1000 messages in flight from the sender), the same
# for every server, unless FANOUT_WINDOW is set (a deeper pipeline: with 1000, both cores
# sat 12% idle during ringrouter's fan-out 1 -> 64).
FANOUT_WINDOW_ARG=${FANOUT_WINDOW:+--window $FANOUT_WINDOW}

# "redis" in the scenario list turns redis on (the old spelling); "default",
# "fanout" and "all" expand.
scen=""
for s in $SCENARIOS; do
  case "$s" in
    redis) REDIS=1 ;;
    default) scen="$scen $DEFAULT_SCENARIOS" ;;
    fanout) scen="$scen $FANOUT_SCENARIOS" ;;
    all) scen="$scen $ALL_SCENARIOS" ;;
    *) scen="$scen $s" ;;
  esac
done
SCENARIOS=${scen# }
[ -n "$SCENARIOS" ] || SCENARIOS=$DEFAULT_SCENARIOS
case "$REDIS" in 0|"") REDIS=0 ;; *) REDIS=1 ;; esac
case "$REDIS_REPLY" in on|off) ;; *) echo "REDIS_REPLY is on or off" >&2; exit 2 ;; esac
case "${SCALE:-1}" in ''|*[!0-9]*|0) echo "SCALE is a whole number, 1 or more" >&2; exit 2 ;; esac

args_for() {
  local a
  a=$(args_for_1 "$1") || return 1
  scaled "$a"
}

# Multiplies the --messages and --duration values of a scenario's arguments by $SCALE.
scaled() {
  local out=() prev=""
  for a in $1; do
    if [ "$prev" = "--messages" ] || [ "$prev" = "--duration" ]; then
      a=$((a * ${SCALE:-1}))
    fi
    out+=("$a"); prev=$a
  done
  echo "${out[*]}"
}

args_for_1() {
  case "$1" in
    pairs1_64)         echo "--pairs 1 --size 64 --messages 1000000 $PAIR_WINDOW" ;;
    pairs1_1k)         echo "--pairs 1 --size 1024 --messages 500000 $PAIR_WINDOW" ;;
    pairs16_64)        echo "--pairs 16 --size 64 --messages 3000000 $PAIR_WINDOW" ;;
    pairs16_1k)        echo "--pairs 16 --size 1024 --messages 1000000 $PAIR_WINDOW" ;;
    pairs256_64)       echo "--pairs 256 --size 64 --messages 3000000 $PAIR_WINDOW" ;;
    pairs256_1k)       echo "--pairs 256 --size 1024 --messages 1000000 $PAIR_WINDOW" ;;
    latency_10k)       echo "--pairs 1 --size 64 --rate 10000 --duration 5" ;;
    latency_10k_split) echo "--pairs 1 --size 64 --rate 10000 --duration 5 --split-shards $SHARDS" ;;
    fanout64)          echo "--fanout 64 --size 64 --messages 100000 $FANOUT_WINDOW_ARG" ;;
    fanout1000)        echo "--fanout 1000 --size 64 --messages 10000 $FANOUT_WINDOW_ARG" ;;
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

# RR and LOAD name other binaries (an A/B, a build with other profile settings); by
# default the release build of this checkout.
if [ -z "${RR:-}" ] || [ -z "${LOAD:-}" ]; then
  cargo build --release -q -p ringrouter -p ringrouter-bench
fi
RR=${RR:-target/release/ringrouter}
LOAD=${LOAD:-target/release/ringrouter-load}
# A generator with --server-pid reads the server's CPU over the measured phase itself.
if "$LOAD" --help 2>/dev/null | grep -q -- --server-pid; then LOAD_PID_FLAG=1; else LOAD_PID_FLAG=0; fi
HZ=$(getconf CLK_TCK)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {  # name port pid log
  for _ in $(seq 100); do
    (echo > /dev/tcp/127.0.0.1/"$2") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.05
  done
  echo "$1 did not start listening on port $2:" >&2; cat "$4" >&2; exit 1
}
# utime + stime of process $1 (all its threads), in clock ticks.
cpu_ticks() {
  local stat rest
  stat=$(cat /proc/"$1"/stat)
  rest=${stat##*) }           # fields from 3 on (the name may hold spaces)
  # shellcheck disable=SC2086
  set -- $rest
  echo $(( ${12} + ${13} ))   # fields 14 and 15
}

RR_PID=""; NATS_PID=""; REDIS_PID=""; TMP=$(mktemp -d)
cleanup() {
  for pid in $RR_PID $NATS_PID $REDIS_PID; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

# A fresh router (and data directory) per scenario unless RR_KEEP=1: ringrouter keeps
# history (on by default), and GBs of it from earlier scenarios (page cache, dirty pages
# written back meanwhile) would slow the later ones down, where nats-server and redis
# carry nothing from one scenario to the next. RR_KEEP=1 shows that steady-state cost.
RR_KEEP=${RR_KEEP:-0}
RR_NO_HTTP=$(no_http "$RR")
start_rr() {
  if [ -n "$RR_PID" ]; then
    kill "$RR_PID" 2>/dev/null || true
    wait "$RR_PID" 2>/dev/null || true
    RR_PID=""
  fi
  rm -rf "$TMP/data" "$TMP/rr.out"
  RR_PORT=$(free_port)
  # shellcheck disable=SC2086
  "$RR" --listen 127.0.0.1:"$RR_PORT" $RR_NO_HTTP --shards "$SHARDS" --data-dir "$TMP/data" $ROUTER_ARGS >"$TMP/rr.out" 2>"$TMP/rr.err" &
  RR_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$TMP/rr.out" 2>/dev/null && break; sleep 0.05; done
  grep -q "listening on" "$TMP/rr.out" || { cat "$TMP/rr.err" >&2; exit 1; }
}
start_rr

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

# One run of scenario $1 against target $2: its JSON report, with the server's
# CPU seconds over the run added (server_cpu_s), is appended to its file. A
# failed run is reported and the table counts what it got; a lossy run (exit 1)
# still prints its report.
run_one() {
  local proto addr pid extra="" rc=0 t0 t1
  case "$2" in
    rr)    proto=ringrouter; addr=127.0.0.1:$RR_PORT;    pid=$RR_PID ;;
    nats)  proto=nats;       addr=127.0.0.1:$NATS_PORT;  pid=$NATS_PID ;;
    redis) proto=redis;      addr=127.0.0.1:$REDIS_PORT; pid=$REDIS_PID; extra="--redis-reply $REDIS_REPLY" ;;
  esac
  if [ "$LOAD_PID_FLAG" = 1 ]; then extra="$extra --server-pid $pid"; fi
  t0=$(cpu_ticks "$pid")
  # shellcheck disable=SC2046,SC2086
  "$LOAD" --addr "$addr" --protocol "$proto" $(args_for "$1") $extra $LOAD_ARGS --json >"$TMP/run.json" 2>>"$TMP/$1.$2.err" || rc=$?
  t1=$(cpu_ticks "$pid")
  if [ -s "$TMP/run.json" ]; then
    # The generator's own reading spans only the measured phase (logins and room
    # joins left out); an older generator has none: the whole run's, from here.
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["server_cpu_s"]=d.get("server_cpu_s") if d.get("server_cpu_s") is not None else (int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]); print(json.dumps(d))' \
      "$TMP/run.json" "$t0" "$t1" "$HZ" >>"$TMP/$1.$2.jsonl"
  fi
  if [ "$rc" != 0 ]; then
    echo "  $1 against $proto: exit $rc: $(tail -n 1 "$TMP/$1.$2.err")" >&2
  fi
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
FIRST=1
for sc in $SCENARIOS; do
  if [ "$RR_KEEP" != 1 ] && [ "$FIRST" != 1 ]; then start_rr; fi
  FIRST=0
  for i in $(seq "$RUNS"); do
    for t in $TARGETS; do
      # The split-shards variant only means something for ringrouter.
      if [ "$sc" = latency_10k_split ] && [ "$t" != rr ]; then continue; fi
      run_one "$sc" "$t"
    done
    echo "  $sc run $i done (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$TMP" "$SCENARIOS" "$SHARDS" "$RUNS" "$TARGETS" "$REDIS_REPLY" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import json, statistics, sys, os
tmp, scen, shards, runs, targets, reply, lb, la = sys.argv[1:9]
scen, targets, runs = scen.split(), targets.split(), int(runs)
redis = "redis" in targets
def load(sc, t):
    p = f"{tmp}/{sc}.{t}.jsonl"
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
def m(x):
    return f"{x/1e6:.2f}M" if x >= 1e6 else f"{x/1e3:.0f}k"
def rate(rows):
    if not rows:
        return "-"
    v = [r["msgs_per_sec"] for r in rows]
    fail = "" if len(rows) == runs else f" ({runs-len(rows)} failed)"
    return f"{m(statistics.median(v))} ({m(min(v))}–{m(max(v))}){fail}"
def ratio(a, b):
    # Run i against run i: they ran back to back.
    v = [x["msgs_per_sec"] / y["msgs_per_sec"] for x, y in zip(a, b) if y["msgs_per_sec"] > 0]
    return "-" if not v else f"{statistics.median(v):.2f}× ({min(v):.2f}–{max(v):.2f})"
def per_m(rows, k):
    v = [r[k] / r["delivered"] * 1e6 for r in rows if r.get("delivered") and k in r]
    return "-" if not v else f"{statistics.median(v):.2f}"
def lat(rows):
    if not rows:
        return "-"
    return f"{statistics.median(r['p50_us'] for r in rows):.0f} / {statistics.median(r['p99_us'] for r in rows):.0f}"
def lost(rows):
    return str(sum(r["lost"] for r in rows)) if rows else "-"
names = {"rr": "ringrouter", "nats": "nats-server", "redis": "redis"}
cols = [names[t] for t in targets]
print(f"ringrouter ({shards} shards) vs {' and '.join(cols[1:])}, loopback, {runs} alternating runs, "
      f"load generator on the same {os.cpu_count()}-core machine (load average {lb} before, {la} after)"
      + (f"; redis publishers with CLIENT REPLY {reply.upper()}" if redis else "")
      + (f"; message counts and durations × {os.environ['SCALE']}" if os.environ.get("SCALE", "1") != "1" else "") + "\n")
hdr = ["scenario"] + [f"{c} msgs/s" for c in cols] + [f"rr/{t}" for t in targets[1:]]
hdr += ["server CPU-s per M deliveries (" + " / ".join(targets) + ")",
        "generator CPU-s per M deliveries (" + " / ".join(targets) + ")",
        "lost (" + "/".join(targets) + ")"]
print("| " + " | ".join(hdr) + " |")
print("|---" + "|---:" * (len(hdr) - 1) + "|")
for sc in scen:
    rows = {t: load(sc, t) for t in targets}
    line = [sc] + [rate(rows[t]) for t in targets]
    line += [ratio(rows["rr"], rows[t]) for t in targets[1:]]
    line.append(" / ".join(per_m(rows[t], "server_cpu_s") for t in targets))
    line.append(" / ".join(per_m(rows[t], "client_cpu_s") for t in targets))
    line.append("/".join(lost(rows[t]) for t in targets))
    print("| " + " | ".join(line) + " |")
print()
print("| scenario | " + " | ".join(f"{c} p50 / p99 µs" for c in cols) + " |")
print("|---" + "|---:" * len(cols) + "|")
for sc in scen:
    print(f"| {sc} | " + " | ".join(lat(load(sc, t)) for t in targets) + " |")
PY

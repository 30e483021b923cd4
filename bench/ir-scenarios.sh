#!/usr/bin/env bash
# Instructions per delivered message, per scenario (valgrind callgrind): a figure
# a noisy host cannot blur. Two passes:
#   1. the router under callgrind (epoll driver: valgrind does not emulate
#      io_uring; --no-pin; a fresh store), --shards 1 and --shards 2, driven by
#      the native load generator: router instructions / deliveries;
#   2. the load generator under callgrind (epoll driver too) against a native
#      router (--shards 1): generator instructions / deliveries (its senders and
#      receivers both: the instructions to send one message and receive it).
# Counts are whole-process totals (start-up, logins, room set-up included)
# over deliveries; the message counts keep that below a few percent and the
# whole table under 10 minutes.
#
#   bench/ir-scenarios.sh [ROUTER_BIN [LOAD_BIN]]
#   SCENARIOS="p16_64 fan64" SHARDS_LIST="1" bench/ir-scenarios.sh
#   ROUTER_ARGS="--inline-payload-max 256" bench/ir-scenarios.sh   # extra router flags (A/B)
#
# Scenarios: p16_64 (16 pairs x 64 B), p16_1k (16 x 1 KiB), p256_64 (256 x 64 B),
# fan64 (1 -> 64 through a room).
set -euo pipefail
# Routers that have an HTTP port (--http-listen, default 127.0.0.1:7880) get none here, so
# runs never collide on it; older binaries (A/B) have no such flag.
no_http() { if "$1" --help 2>/dev/null | grep -q -- --http-listen; then echo "--http-listen off"; fi; }
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ringrouter}
LOAD=${2:-${LOAD:-target/release/ringrouter-load}}
SCENARIOS=${SCENARIOS:-"p16_64 p16_1k p256_64 fan64"}
SHARDS_LIST=${SHARDS_LIST:-"1 2"}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

args_for() {
  case "$1" in
    p16_64)  echo "--pairs 16 --size 64 --messages 500000" ;;
    p16_1k)  echo "--pairs 16 --size 1024 --messages 200000" ;;
    p256_64) echo "--pairs 256 --size 64 --messages 500000" ;;
    fan64)   echo "--fanout 64 --size 64 --messages 10000" ;;
    *) return 1 ;;
  esac
}
label() {
  case "$1" in
    p16_64) echo "16 pairs × 64 B" ;; p16_1k) echo "16 pairs × 1 KiB" ;;
    p256_64) echo "256 pairs × 64 B" ;; fan64) echo "fan-out 1 → 64 (room)" ;;
  esac
}
for sc in $SCENARIOS; do args_for "$sc" >/dev/null || { echo "unknown scenario $sc" >&2; exit 2; }; done

dir=$(mktemp -d)
RPID=""
trap '[ -n "$RPID" ] && kill "$RPID" 2>/dev/null; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
delivered() { python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["lost"]==0, d; print(d["delivered"])'; }
total_ir() { grep -E "^(summary|totals):" "$1" | head -1 | awk '{print $2}'; }
# fjall's background worker threads (LSM flushes and compactions) poll their queue; under
# valgrind, which runs one thread at a time, that polling runs for as long as the router
# is slowed down (billions of instructions for a 30 s run, where natively the workers
# take ~40 ms of CPU). Their threads are left out of the router's count.
fjall_ir() {
  callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
    | grep -E 'fjall-[^/]*/src/worker_pool.rs:std::sys::backtrace::__rust_begin_short_backtrace' \
    | head -1 | awk '{gsub(",","",$1); printf "%.0f\n", $1} END {if (NR == 0) print 0}'
}
router_ir() { echo $(( $(total_ir "$1") - $(fjall_ir "$1") )); }
# Starts a router ($1 shards; "cg" as $2: under callgrind into $dir/cg.out); sets PORT, RPID.
start_router() {
  PORT=$(free_port)
  rm -rf "$dir/data" "$dir/out"
  local pre=()
  [ "${2:-}" = cg ] && pre=(valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --dump-instr=no)
  MONOIO_FORCE_LEGACY_DRIVER=1 "${pre[@]}" "$BIN" --listen 127.0.0.1:"$PORT" $(no_http "$BIN") --shards "$1" --no-pin \
    --data-dir "$dir/data" ${ROUTER_ARGS:-} >"$dir/out" 2>"$dir/err" &
  RPID=$!
  for _ in $(seq 600); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
  grep -q "listening on" "$dir/out" || { cat "$dir/err" >&2; exit 1; }
}
stop_router() { kill -TERM "$RPID"; wait "$RPID" || true; RPID=""; }

declare -A RIR GIR
t0=$(date +%s)
# Pass 1: the router under callgrind.
for shards in $SHARDS_LIST; do
  for sc in $SCENARIOS; do
    start_router "$shards" cg
    # shellcheck disable=SC2046
    n=$("$LOAD" --addr 127.0.0.1:"$PORT" $(args_for "$sc") --json | delivered)
    stop_router
    RIR[$sc.$shards]=$(python3 -c "print(f'{$(router_ir "$dir/cg.out")/$n:,.0f}')")
    echo "  (fjall worker threads left out: $(fjall_ir "$dir/cg.out") instructions)" >&2
    echo "  router, $shards shard(s), $sc: ${RIR[$sc.$shards]} per delivery ($n delivered, $(( $(date +%s) - t0 )) s so far)" >&2
  done
done
# Pass 2: the load generator under callgrind against a native router.
for sc in $SCENARIOS; do
  start_router 1
  # shellcheck disable=SC2046
  n=$(MONOIO_FORCE_LEGACY_DRIVER=1 valgrind --tool=callgrind --callgrind-out-file="$dir/gen.out" --dump-instr=no \
      "$LOAD" --addr 127.0.0.1:"$PORT" $(args_for "$sc") --json 2>"$dir/gen.err" | delivered)
  stop_router
  GIR[$sc]=$(python3 -c "print(f'{$(total_ir "$dir/gen.out")/$n:,.0f}')")
  echo "  generator, $sc: ${GIR[$sc]} per delivery ($(( $(date +%s) - t0 )) s so far)" >&2
done

hdr="| scenario (load args) |"; sep="|---|"
for shards in $SHARDS_LIST; do hdr="$hdr router Ir/delivery, $shards shard(s) |"; sep="$sep---:|"; done
echo "Instructions per delivered message (callgrind, epoll driver; $(basename "$BIN"), $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo
echo "$hdr generator Ir/delivery |"
echo "$sep---:|"
for sc in $SCENARIOS; do
  row="| $(label "$sc") (\`$(args_for "$sc")\`) |"
  for shards in $SHARDS_LIST; do row="$row ${RIR[$sc.$shards]} |"; done
  echo "$row ${GIR[$sc]} |"
done
echo
echo "($(( $(date +%s) - t0 )) s)"

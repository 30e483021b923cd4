#!/usr/bin/env bash
# Instructions per delivered message (valgrind callgrind), for A/B of hot-path changes on a
# noisy host: instruction counts repeat where wall-clock rates do not.
#
#   bench/ir.sh BIN [load args...]        (default: --pairs 4 --size 64 --messages 200000)
#   ROUTER_ARGS="--history-per-conversation 0" bench/ir.sh BIN   (extra router flags)
#   SHARDS=2 bench/ir.sh BIN ...   (two shards: cross-shard mail counted too; the counts then
#                                   vary ±5% run to run with how the turns fall)
#
# Runs BIN (--shards 1 unless SHARDS, fresh store, epoll driver: valgrind does not emulate io_uring) under callgrind, drives it with ringrouter-load, stops
# it with SIGTERM and prints total instructions / messages delivered. Compare two binaries
# in the same run: bench/ir.sh A; bench/ir.sh B. CG_OUT=FILE keeps the callgrind output
# (callgrind_annotate FILE: where the instructions go).
set -euo pipefail
# Routers that have an HTTP port (--http-listen, default 127.0.0.1:7880) get none here, so
# runs never collide on it; older binaries (A/B) have no such flag.
no_http() { if "$1" --help 2>/dev/null | grep -q -- --http-listen; then echo "--http-listen off"; fi; }
BIN=$1; shift || true
LOAD=${LOAD:-target/release/ringrouter-load}
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(--pairs 4 --size 64 --messages 200000)
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MONOIO_FORCE_LEGACY_DRIVER=1 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --dump-instr=no \
  "$BIN" --listen 127.0.0.1:"$port" $(no_http "$BIN") --shards ${SHARDS:-1} --no-pin --data-dir "$dir/data" ${ROUTER_ARGS:-} \
  >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 600); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
msgs=$("$LOAD" --addr 127.0.0.1:"$port" "${ARGS[@]}" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["lost"]==0, d; print(d["delivered"])')
kill -TERM "$pid"; wait "$pid" || true
ir=$(grep -E "^(summary|totals):" "$dir/cg.out" | head -1 | awk '{print $2}')
[ -n "${CG_OUT:-}" ] && cp "$dir/cg.out" "$CG_OUT"
python3 -c "print(f'$(basename "$BIN"): {int($ir):,} instructions, {int($msgs):,} delivered, {int($ir)/int($msgs):.0f} per message')"

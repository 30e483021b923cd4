#!/usr/bin/env bash
# Instructions per delivery in the load generator (valgrind callgrind), for A/B of the
# engine's receive and send paths (what `python -m ringrouter.load` and `cargo bench` e2e
# run too): on a 2-core host every instruction the client spends is taken from the
# server. The router runs natively; only the generator is counted.
#
#   bench/ir-gen.sh ROUTER LOAD [load args...]   (default: --fanout 64 --size 64 --messages 20000)
#   bench/ir-gen.sh target/release/ringrouter target/release/ringrouter-load --pairs 16 --size 64 --messages 200000
#
# The generator runs on monoio's epoll driver (valgrind does not emulate io_uring). The
# count includes the run's setup (logins, the fan-out room): small beside 1.28M deliveries.
# CG_OUT=FILE keeps the callgrind output (callgrind_annotate FILE: where they go).
set -euo pipefail
RR=$1; LOAD=$2; shift 2
ARGS=("$@"); [ ${#ARGS[@]} -eq 0 ] && ARGS=(--fanout 64 --size 64 --messages 20000)
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$RR" --listen 127.0.0.1:"$port" --http-listen off --shards 2 --data-dir "$dir/data" >"$dir/out" 2>"$dir/err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.05; done
msgs=$(MONOIO_FORCE_LEGACY_DRIVER=1 valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --dump-instr=no \
  "$LOAD" --addr 127.0.0.1:"$port" --protocol ringrouter "${ARGS[@]}" --json 2>"$dir/load.err" \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["lost"]==0, d; print(d["delivered"])') \
  || { echo "the load run failed:" >&2; grep -v "^==[0-9]*==" "$dir/load.err" | tail -n 20 >&2; exit 1; }
ir=$(grep -E "^(summary|totals):" "$dir/cg.out" | head -1 | awk '{print $2}')
[ -n "${CG_OUT:-}" ] && cp "$dir/cg.out" "$CG_OUT"
python3 -c "print(f'$(basename "$LOAD"): {int($ir):,} instructions, {int($msgs):,} delivered, {int($ir)/int($msgs):.0f} per delivery')"

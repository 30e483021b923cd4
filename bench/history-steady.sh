#!/usr/bin/env bash
# History's steady-state cost: one router (history on, the default) measured at 256 x 64 B
# fresh, then after three million 1 KiB messages of history (each load run logs in new
# users, so new conversations), then again after a pause while the kernel writes that
# history back. Prints msgs/s and the router's CPU per thread kind after each step.
#
#   bench/history-steady.sh ROUTER LOAD
set -euo pipefail
RR=$1; LOAD=$2; T=$(mktemp -d)
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086
"$RR" --listen 127.0.0.1:"$P" --http-listen off --shards 2 --data-dir "$T/data" ${ROUTER_ARGS:-} >"$T/out" 2>"$T/err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$T"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$T/out" 2>/dev/null && break; sleep 0.05; done
run() {
  # shellcheck disable=SC2086
  "$LOAD" --addr 127.0.0.1:"$P" --protocol ringrouter $1 --json \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print('%s: %.0fk msgs/s' % (sys.argv[1], d['msgs_per_sec']/1e3))" "$1"
}
cpu() {
  for t in /proc/$PID/task/*; do echo "$(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done \
    | awk -v hz="$(getconf CLK_TCK)" '{n=$1; sub(/-[0-9]+$/, "", n); a[n]+=$2} END {for (k in a) printf "%s=%.2fs ", k, a[k]/hz; print "(cumulative)"}'
}
P256="--pairs 256 --size 64 --messages 3000000 --window 16000"
run "$P256"; cpu
for _ in 1 2 3; do run "--pairs 16 --size 1024 --messages 1000000 --window 16000"; done
echo "history on disk: $(du -sh "$T/data/history" | cut -f1)"; cpu
run "$P256"; cpu
sleep 5
echo "after a 5 s pause:"; run "$P256"; cpu

#!/usr/bin/env bash
# One load run against a fresh router: msgs/s, the router's CPU seconds over the run, and
# its CPU per thread kind (shards, storage thread, fjall workers). For A/B of two builds,
# run it alternately on each.
#
#   bench/rate-cpu.sh ROUTER LOAD ["router args"] ["load args"]
#   bench/rate-cpu.sh target/release/ringrouter target/release/ringrouter-load "" \
#       "--pairs 16 --size 1024 --messages 1000000 --window 16000"      # (the default)
#   bench/rate-cpu.sh A LOAD "--history-per-conversation 0"              # history off
#   bench/rate-cpu.sh A LOAD "" "--pairs 1 --size 64 --rate 10000 --duration 3"   # paced: latency, CPU per message at a low rate
#   LEGACY=1 bench/rate-cpu.sh A LOAD   # (any value) the router on its epoll driver, the generator not
#   WS=1 bench/rate-cpu.sh A LOAD       # (any value) over WebSocket, on the router's HTTP port
#
# For A/B, fix the generator's user names (`--user-prefix ab21-` in the load args: 16 pairs'
# 32 users 16 / 16 on 2 shards). By default they change per process, and so does which shard
# each user lives on: the busier shard bounds a run, and runs of one build spread ±8% where
# with fixed names they spread ±2% (BENCHMARKS.md, twenty-seventh pass).
set -euo pipefail
RR=$1; LOAD=$2; RA=${3:-}; LA=${4:-"--pairs 16 --size 1024 --messages 1000000 --window 16000"}
T=$(mktemp -d)
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HTTP=off; LP=$P; LT=""
if [ -n "${WS:-}" ]; then
  LP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  HTTP=127.0.0.1:$LP; LT="--transport ws"
fi
# shellcheck disable=SC2086
${LEGACY:+env MONOIO_FORCE_LEGACY_DRIVER=1} "$RR" --listen 127.0.0.1:"$P" --http-listen "$HTTP" --shards "${SHARDS:-2}" --data-dir "$T/data" $RA >"$T/out" 2>"$T/err" &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$T"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$T/out" 2>/dev/null && break; sleep 0.05; done
t0=$(awk '{print $14+$15}' /proc/$PID/stat)
f0=$(awk '{print $10}' /proc/$PID/stat)
# shellcheck disable=SC2086
"$LOAD" --addr 127.0.0.1:"$LP" --protocol ringrouter $LT $LA --json >"$T/j"
t1=$(awk '{print $14+$15}' /proc/$PID/stat)
f1=$(awk '{print $10}' /proc/$PID/stat)
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('rate %.0fk lost %d router cpu %.2fs generator cpu %.2fs p50 %.0f us p99 %.0f us' % (d['msgs_per_sec']/1e3, d['lost'], (int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]), d.get('client_cpu_s', float('nan')), d['p50_us'], d['p99_us']))" "$T/j" "$t0" "$t1" "$(getconf CLK_TCK)"
# Per thread kind: CPU seconds, user + system (system time bounds what any I/O mechanism can
# save: io_uring against epoll), over the router's life (start-up and logins included).
for t in /proc/$PID/task/*; do echo "$(cat "$t/comm") $(awk '{print $14, $15}' "$t/stat")"; done \
  | awk -v hz="$(getconf CLK_TCK)" '{n=$1; sub(/-[0-9]+$/, "", n); u[n]+=$2; s[n]+=$3}
      END {for (k in u) if (u[k] + s[k] > 0) printf "%s=%.2fs (user %.2f sys %.2f) ", k, (u[k] + s[k])/hz, u[k]/hz, s[k]/hz; print ""}'
# Bytes the router wrote to files and sockets (write system calls), and to the disk.
awk '/^(wchar|write_bytes)/ {printf "%s %.1f MB  ", $1, $2/1e6} END {print ""}' /proc/$PID/io
# Minor page faults over the run (memory faulted in: first touch, or purged and touched again).
echo "minor faults $((f1 - f0))"
# The router's peak RSS over its life.
awk '/^VmHWM/ {printf "peak rss %.0f MiB\n", $2/1024}' /proc/$PID/status

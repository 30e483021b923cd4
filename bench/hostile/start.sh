#!/bin/bash
# Starts a router for the hostile-input scripts of this directory (2 shards, a fresh data
# directory, an HTTP port) and prints: PID TCPADDR HTTPADDR DATADIR.
#   read pid tcp http dir < <(bench/hostile/start.sh NAME [router flags])
#   python3 bench/hostile/requeue_blowup.py $tcp $pid $http 64 100000; kill $pid
# RR=path/to/ringrouter picks the binary (default target/release/ringrouter).
name=$1; shift
RR=${RR:-target/release/ringrouter}
d=$(mktemp -d /tmp/rr-hostile-$name.XXXX)
"$RR" --listen 127.0.0.1:0 --shards 2 --data-dir "$d/data" --http-listen 127.0.0.1:0 "$@" >"$d/out" 2>"$d/err" &
pid=$!
for _ in $(seq 100); do grep -q "http on" "$d/out" 2>/dev/null && break; sleep 0.1; done
tcp=$(grep -o "listening on [0-9.:]*" "$d/out" | awk '{print $3}')
http=$(grep -o "http on [0-9.:]*" "$d/out" | awk '{print $3}')
echo "$pid $tcp $http $d/data"

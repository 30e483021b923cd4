#!/usr/bin/env bash
# Transports side by side: the same load over TCP and WebSocket (16 pairs x 64 B),
# and over TCP and TLS (16 pairs x 1 KiB), runs alternating, a fresh router per run
# (plain, or with a self-signed certificate made by openssl for the TLS runs).
# Prints msgs/s per run and the median of each.
#
# usage: bench/transports.sh [runs]        (default 3; release binaries in target/release)
#        WHICH=ws|tls bench/transports.sh   (only one of the two comparisons)
set -euo pipefail
RUNS=${1:-3}
ROUTER=${ROUTER:-target/release/ringrouter}
LOAD=${LOAD:-target/release/ringrouter-load}
MSGS_SMALL=${MSGS_SMALL:-2000000}
MSGS_LARGE=${MSGS_LARGE:-1000000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = localhost
[ext]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -config "$WORK/openssl.cnf" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

# run LABEL TLS(0|1) TRANSPORT(tcp|ws) SIZE MESSAGES: one router, one load; prints msgs/s.
run() {
  local label=$1 tls=$2 transport=$3 size=$4 messages=$5
  local data; data=$(mktemp -d "$WORK/data.XXXX")
  local out="$data/out"
  local targs=() largs=()
  if [ "$tls" = 1 ]; then
    targs=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem")
    largs=(--tls --ca-file "$WORK/cert.pem")
  fi
  "$ROUTER" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$data" "${targs[@]}" >"$out" 2>&1 &
  local pid=$!
  for _ in $(seq 500); do grep -qs "http on" "$out" && break; sleep 0.02; done
  local addr
  if [ "$transport" = ws ]; then
    addr=$(sed -n 's/^ringrouter http on \([^ ]*\).*/\1/p' "$out")
  else
    addr=$(sed -n 's/^ringrouter listening on \([^ ]*\).*/\1/p' "$out")
  fi
  local r
  r=$("$LOAD" --addr "$addr" --transport "$transport" "${largs[@]}" --pairs 16 --size "$size" \
        --messages "$messages" --json |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["msgs_per_sec"]), d["lost"], round(d["client_cpu_s"], 2))')
  # The router's CPU seconds (user + system) over its whole life.
  local rcpu
  rcpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  set -- $r
  echo "$label $1"
  echo "$label msgs/s $1 lost $2 load-cpu-s $3 router-cpu-s $rcpu" >&2
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

WHICH=${WHICH:-ws tls}
results="$WORK/results"
: >"$results"
med() { grep "^$1 " "$results" | cut -d' ' -f2 | median; }
# compare WHAT A B TLS TRANSPORT SIZE MESSAGES: RUNS alternating runs of plain TCP (A)
# and of the transport (B), and the ratio of their medians.
compare() {
  local what=$1 a=$2 b=$3 tls=$4 transport=$5 size=$6 messages=$7
  for _ in $(seq "$RUNS"); do
    run "$a" 0 tcp "$size" "$messages" >>"$results"
    run "$b" "$tls" "$transport" "$size" "$messages" >>"$results"
  done
  python3 -c "print(f'$what: $a {$(med "$a")} msgs/s, $b {$(med "$b")} msgs/s (medians): $b/$a {$(med "$b")/$(med "$a"):.0%}')"
}
if [[ " $WHICH " == *" ws "* ]]; then compare "16 x 64 B" tcp64 ws64 0 ws 64 "$MSGS_SMALL"; fi
if [[ " $WHICH " == *" tls "* ]]; then compare "16 x 1 KiB" tcp1k tls1k 1 tcp 1024 "$MSGS_LARGE"; fi

#!/usr/bin/env bash
# Soak test (issue 9): a release router under mixed traffic for N minutes.
#
#   scripts/soak.sh [--minutes N] [--out DIR] [--rate MSGS_PER_S] [--no-build]
#                   [--router-arg ARG]... [-- DRIVER_ARGS...]
#
# 1. builds the router and the soak driver (cargo build --release; skipped with --no-build);
# 2. starts target/release/ringrouter on a free loopback port with a fresh temporary
#    --data-dir, and reads the address from its "ringrouter listening on ADDR (...)" line;
# 3. runs ringrouter-soak against it for N minutes (default 3): well-behaved users (DMs,
#    second devices, offline periods, rooms, slow readers) checked for loss and order, and
#    misbehaving clients (never-readers, garbage, connection churn); it samples the
#    router's RSS and fds every 10 s into DIR/samples.csv and checks loss, order, RSS
#    and fds (ringrouter-soak --help lists the mix and its intensities; pass them after --);
# 4. stops the router with SIGTERM and checks that it exits 0 and never panicked;
# 5. plots DIR/samples.csv into DIR/soak.png with matplotlib (./.venv if present, else a
#    venv in target/soak-venv; matplotlib is pip-installed if missing).
#
# Output in DIR (default target/soak): samples.csv, summary.json, driver.out (summary),
# driver.log (progress), router.stdout, router.stderr, soak.png.
# Exits 0 only if every check passed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MINUTES=3
OUT="target/soak"
RATE=5000
BUILD=1
ROUTER_ARGS=()
DRIVER_ARGS=()

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --router-arg) ROUTER_ARGS+=("$2"); shift 2 ;;
        --) shift; DRIVER_ARGS=("$@"); break ;;
        -h|--help) usage; exit 0 ;;
        *) echo "soak.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ROUTER="$TARGET_DIR/release/ringrouter"
DRIVER="$TARGET_DIR/release/ringrouter-soak"

if [ "$BUILD" = 1 ]; then
    step "building the router and the soak driver (release, lto: this takes minutes)"
    cargo build --release -p ringrouter
    cargo build --release -p ringrouter-bench --bin ringrouter-soak
fi
for b in "$ROUTER" "$DRIVER"; do
    [ -x "$b" ] || { echo "soak.sh: $b is missing (run without --no-build)" >&2; exit 2; }
done

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT"/samples.csv "$OUT"/summary.json "$OUT"/soak.png
DATA="$(mktemp -d "${TMPDIR:-/tmp}/ringrouter-soak.XXXXXX")"
RPID=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$RPID" ] && kill -0 "$RPID" 2>/dev/null; then
        kill -KILL "$RPID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT

# A router with an HTTP port gets a free one too (so two soaks never collide).
if "$ROUTER" --help 2>/dev/null | grep -q -- '--http-listen'; then
    ROUTER_ARGS=(--http-listen 127.0.0.1:0 "${ROUTER_ARGS[@]}")
fi

step "starting the router (data dir $DATA)"
"$ROUTER" --listen 127.0.0.1:0 --data-dir "$DATA" "${ROUTER_ARGS[@]}" \
    >"$OUT/router.stdout" 2>"$OUT/router.stderr" &
RPID=$!
ADDR=""
for _ in $(seq 300); do
    ADDR="$(sed -n 's/^ringrouter listening on \([^ ]*\) (.*/\1/p' "$OUT/router.stdout")"
    [ -n "$ADDR" ] && break
    if ! kill -0 "$RPID" 2>/dev/null; then
        echo "soak.sh: the router exited before listening:" >&2
        cat "$OUT/router.stderr" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$ADDR" ]; then
    echo "soak.sh: no 'ringrouter listening on' line within 30 s" >&2
    exit 1
fi
head -n 1 "$OUT/router.stdout"

step "running the soak driver for $MINUTES min at $RATE msgs/s (pid $RPID, $ADDR)"
set +e
"$DRIVER" --addr "$ADDR" --router-pid "$RPID" --data-dir "$DATA" --minutes "$MINUTES" \
    --rate "$RATE" --out "$OUT" "${DRIVER_ARGS[@]}" 2> >(tee "$OUT/driver.log" >&2) \
    | tee "$OUT/driver.out"
DRIVER_RC=${PIPESTATUS[0]}
set -e

step "stopping the router (SIGTERM)"
STOP_START=$(date +%s%N)
kill -TERM "$RPID"
ROUTER_RC=""
for _ in $(seq 600); do
    kill -0 "$RPID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$RPID" 2>/dev/null; then
    echo "soak.sh: the router did not exit within 60 s of SIGTERM; killing it" >&2
    kill -KILL "$RPID" 2>/dev/null || true
fi
if wait "$RPID"; then ROUTER_RC=0; else ROUTER_RC=$?; fi
RPID=""
STOP_SECS=$(awk -v a="$STOP_START" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
PANICS=$(grep -c 'panicked' "$OUT/router.stderr" || true)
# The router's own counters, logged as it stops (colour codes stripped).
STATS=$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/router.stderr" | grep -o 'stopped stats=.*' | tail -n 1 || true)
[ -n "$STATS" ] && echo "router: $STATS"

step "plotting $OUT/samples.csv"
PLOT="not made"
if [ -s "$OUT/samples.csv" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then
        VENV="$ROOT/.venv"
    else
        VENV="$TARGET_DIR/soak-venv"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || true
    fi
    if [ -x "$VENV/bin/python" ]; then
        if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
            PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet matplotlib || true
        fi
        if "$VENV/bin/python" "$ROOT/scripts/soak_plot.py" "$OUT/samples.csv" "$OUT/soak.png"; then
            PLOT="$OUT/soak.png"
        fi
    fi
fi
[ "$PLOT" = "not made" ] && echo "soak.sh: warning: no plot (python3 -m venv or pip install matplotlib failed)" >&2

FAIL=0
verdict() { # verdict OK|FAIL what
    printf '  %s %s\n' "$1" "$2"
    [ "$1" = PASS ] || FAIL=1
}
step "soak checks"
case "$DRIVER_RC" in
    0) verdict PASS "driver checks (loss, order, integrity, RSS, fds; see above)" ;;
    1) verdict FAIL "driver checks (loss, order, integrity, RSS, fds; see above)" ;;
    *) verdict FAIL "the driver failed to run (exit $DRIVER_RC; see $OUT/driver.log)" ;;
esac
if [ "$PANICS" = 0 ]; then
    verdict PASS "no panic in the router's stderr"
else
    verdict FAIL "$PANICS 'panicked' lines in $OUT/router.stderr"
fi
if [ "$ROUTER_RC" = 0 ]; then
    verdict PASS "router exited 0 on SIGTERM (after ${STOP_SECS} s)"
else
    verdict FAIL "router exit code $ROUTER_RC on SIGTERM (after ${STOP_SECS} s)"
fi
echo "  outputs: $OUT (samples.csv, summary.json, driver.out, router.stderr, plot: $PLOT)"
exit "$FAIL"

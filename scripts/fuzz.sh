#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/fuzz_targets/ for SECONDS each, one after the
# other, and prints the executions and crashes of each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # SECONDS defaults to 60; default: every target
#   FUZZ_ARGS="-runs=10000000" scripts/fuzz.sh 3600 shard_frames   # extra libFuzzer flags
#
# Needs the nightly toolchain (`cargo +nightly`); installs cargo-fuzz if it is missing.
# Each run starts from the committed corpus fuzz/corpus/<target>/ (read only) plus a
# working corpus in fuzz/target/corpus/<target>/ (new inputs land there, kept between
# runs; `cargo +nightly fuzz cmin` and a copy refresh the committed one). A crash leaves
# its input in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...`.
# Exits non-zero if any target crashed (or failed to build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECONDS_EACH="${1:-60}"
shift || true

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=()
    for f in fuzz_targets/*.rs; do
        TARGETS+=("$(basename "$f" .rs)")
    done
fi

status=0
summary=()
for t in "${TARGETS[@]}"; do
    work="target/corpus/$t"
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    log="target/fuzz-$t.log"
    echo "==> $t: ${SECONDS_EACH}s"
    set +e
    cargo +nightly fuzz run "$t" "$work" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tr -d '#' | tail -1)
    after=$(find "artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="? (exit $rc, see $log)"
    fi
    line="$t: ${execs:-0} executions, $crashes crashes"
    echo "    $line"
    summary+=("$line")
    if [ "$rc" -ne 0 ]; then
        status=1
        tail -n 40 "$log" >&2
    fi
done

echo
echo "==> summary (${SECONDS_EACH}s per target)"
printf '%s\n' "${summary[@]}"
exit "$status"

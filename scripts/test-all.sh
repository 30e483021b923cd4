#!/usr/bin/env bash
# The test command: builds and tests everything, Rust and Python.
#
#   scripts/test-all.sh
#
# 1. a virtualenv at .venv (python3 -m venv) with maturin, pytest and schemathesis
#    (from PyPI; schemathesis checks the HTTP port against docs/openapi.yaml);
# 2. cargo build --workspace --bins, cargo test --workspace;
# 3. pip install ./python_client into the venv (maturin builds the Rust extension,
#    crate pybind/, in release mode);
# 4. for the browser tests (python_client/tests/test_browser.py): Debian's chromium
#    (apt-get install, when running as root with apt-get; else those tests are skipped,
#    saying why) and Playwright for Python (pip, into the venv; it drives
#    /usr/bin/chromium, so `playwright install` is never run);
# 5. pytest python_client/tests against target/debug/ringrouter.
#
# Needs only Rust (cargo) and Python >= 3.9 with its venv module; the network is
# used for crates.io, PyPI and Debian's packages only, and only when something is
# missing. Re-runs reuse the venv, its packages and cargo's build cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

step() { printf '\n==> %s\n' "$*"; }

# ---------------------------------------------------------------- Python venv
if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtualenv $VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "error: '$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)" >&2
        rm -rf "$VENV"
        exit 1
    fi
fi
# Activate it: maturin's build backend runs `maturin` from PATH.
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
if [ ! -x "$VENV/bin/maturin" ] || [ ! -x "$VENV/bin/pytest" ] || [ ! -x "$VENV/bin/schemathesis" ]; then
    step "installing maturin, pytest and schemathesis into the virtualenv"
    "$VENV/bin/python" -m pip install --quiet "maturin>=1.9.4,<2" "pytest>=7" "schemathesis>=4,<5"
fi

# ----------------------------------------------------------------------- Rust
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace"
cargo test --workspace

# --------------------------------------------------------------------- Python
step "pip install ./python_client (maturin builds the extension)"
# No build isolation: the venv's maturin builds it, so nothing is downloaded again.
PIP_INSTALL=("$VENV/bin/python" -m pip install --no-build-isolation --no-deps --force-reinstall ./python_client)
if "${PIP_INSTALL[@]}" > "$ROOT/target/pip-install.log" 2>&1; then
    tail -n 1 "$ROOT/target/pip-install.log"
else
    cat "$ROOT/target/pip-install.log" >&2
    echo "pip install failed; once more with -v:" >&2
    "${PIP_INSTALL[@]}" -v
fi

step "browser tests: Debian chromium and Playwright"
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "installing chromium (apt-get)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
            > "$ROOT/target/apt-chromium.log" 2>&1; then
            cat "$ROOT/target/apt-chromium.log" >&2
            echo "error: apt-get install chromium failed" >&2
            # Under CI the browser tests must run.
            if [ "${CI:-}" = true ]; then exit 1; fi
        fi
    else
        echo "note: /usr/bin/chromium is missing and cannot be installed here (needs root and apt-get):" \
            "the browser tests will be skipped"
    fi
fi
if ! "$VENV/bin/python" -c "import playwright.sync_api" 2> /dev/null; then
    echo "installing playwright into the virtualenv"
    "$VENV/bin/python" -m pip install --quiet "playwright>=1.49"
fi
[ -x /usr/bin/chromium ] && /usr/bin/chromium --version 2> /dev/null || true

step "pytest python_client/tests"
export RINGROUTER_BIN="$ROOT/target/debug/ringrouter"
"$VENV/bin/python" -m pytest python_client/tests -q

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
# 4. pytest python_client/tests against target/debug/ringrouter.
#
# Needs only Rust (cargo) and Python >= 3.9 with its venv module; the network is
# used for crates.io and PyPI only, and only when something is missing. Re-runs
# reuse the venv, its packages and cargo's build cache.
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

step "pytest python_client/tests"
export RINGROUTER_BIN="$ROOT/target/debug/ringrouter"
"$VENV/bin/python" -m pytest python_client/tests -q

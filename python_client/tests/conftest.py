"""Fixtures: a real ringrouter process per test session (and one with --auth jwt,
one with --auth accounts).

The router binary is ``$RINGROUTER_BIN``, else ``target/debug/ringrouter`` or
``target/release/ringrouter`` under the repository root (the newer of the two).
It is started with ``--listen 127.0.0.1:0 --no-pin --data-dir DIR`` (a fresh
temporary store per router, removed when it is terminated, unless the test gives
its own ``--data-dir``); its first stdout line,
``ringrouter listening on ADDR (N shards, DRIVER)``, gives the address. Its HTTP
port is put on a free port too (``--http-listen 127.0.0.1:0`` unless the test gives
``--http-listen``); the second line, ``ringrouter http on ADDR``, gives it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

import ringrouter

REPO = Path(__file__).resolve().parents[2]
PYTHON_CLIENT = REPO / "python_client"
BANNER = re.compile(r"^ringrouter listening on (\S+) \((\d+) shards?, ([^)]*)\)")
HTTP_BANNER = re.compile(r"^ringrouter http on (\S+)$")
JWT_SECRET = b"python-client-test-secret"


def router_bin() -> Path:
    env = os.environ.get("RINGROUTER_BIN")
    if env:
        p = Path(env)
        if not p.is_file():
            pytest.exit(f"RINGROUTER_BIN={env} is not a file", returncode=2)
        return p
    found = [REPO / "target" / prof / "ringrouter" for prof in ("debug", "release")]
    found = [p for p in found if p.is_file()]
    if not found:
        pytest.exit(
            "no router binary: run `cargo build -p ringrouter` or set RINGROUTER_BIN",
            returncode=2,
        )
    return max(found, key=lambda p: p.stat().st_mtime)


class Router:
    """A running router process."""

    def __init__(self, args: List[str]) -> None:
        # Each router gets its own store unless the test names one (restarts).
        self.data_dir: Optional[str] = None
        if "--data-dir" not in args:
            self.data_dir = tempfile.mkdtemp(prefix="ringrouter-test-")
            args = [*args, "--data-dir", self.data_dir]
        # Routers running side by side must not share the default HTTP port.
        http_off = "--http-listen" in args and args[args.index("--http-listen") + 1 :][:1] == ["off"]
        if "--http-listen" not in args:
            args = [*args, "--http-listen", "127.0.0.1:0"]
        # No free-space floor: a CI disk with little room must not refuse offline
        # messages in tests (the floor has its own Rust test).
        if "--min-free-disk-bytes" not in args:
            args = [*args, "--min-free-disk-bytes", "0"]
        cmd = [str(router_bin()), "--listen", "127.0.0.1:0", "--no-pin", "--argon2-cheap", *args]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.stderr_lines: List[str] = []
        assert self.proc.stderr is not None and self.proc.stdout is not None
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self.proc.stdout.readline()
        m = BANNER.match(line)
        if not m:
            self.proc.kill()
            self.proc.wait(5)
            time.sleep(0.1)
            if self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            raise RuntimeError(
                f"router did not start: first line {line!r}, stderr: {''.join(self.stderr_lines)}"
            )
        self.addr: str = m.group(1)
        self.shards = int(m.group(2))
        self.driver = m.group(3)
        # The HTTP port's line follows at once (none with --http-listen off).
        self.http: Optional[str] = None
        if not http_off:
            hm = HTTP_BANNER.match(self.proc.stdout.readline().strip())
            self.http = hm.group(1) if hm else None
        self.http_addr: Optional[str] = self.http
        # Keep reading stdout so the router never blocks on a full pipe.
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _drain_stdout(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def terminate(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
        return self.proc.returncode


@pytest.fixture(scope="session")
def router() -> Iterator[Router]:
    """A router with open auth, shared by the whole session (with history, which is
    off by default)."""
    r = Router(["--history-per-conversation", "10000"])
    yield r
    r.terminate()


@pytest.fixture
def own_router() -> Iterator[Callable[..., Router]]:
    """Starts routers private to one test (terminated at its end)."""
    started: List[Router] = []

    def start(*args: str) -> Router:
        r = Router(list(args))
        started.append(r)
        return r

    yield start
    for r in started:
        r.terminate()


@pytest.fixture
def closed_port_addr() -> Iterator[str]:
    """An address where nothing listens: a port held bound (not listening) by the test."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    host, port = s.getsockname()
    yield f"{host}:{port}"
    s.close()


@pytest.fixture(scope="session")
def jwt_secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("jwt") / "secret"
    p.write_bytes(JWT_SECRET + b"\n")
    return p


@pytest.fixture(scope="session")
def jwt_router(jwt_secret_file: Path) -> Iterator[Router]:
    """A router with --auth jwt (secret: JWT_SECRET)."""
    r = Router(["--auth", "jwt", "--jwt-secret-file", str(jwt_secret_file)])
    yield r
    r.terminate()


@pytest.fixture(scope="session")
def accounts_router() -> Iterator[Router]:
    """A router with --auth accounts, shared by the whole session."""
    r = Router(["--auth", "accounts"])
    yield r
    r.terminate()


def make_jwt(secret: bytes, sub: str, ttl: int = 300) -> str:
    """An HS256 JWT with ``sub`` and ``exp`` (no third-party library needed)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": sub, "exp": int(time.time()) + ttl}).encode())
    signing_input = f"{header}.{claims}".encode()
    sig = b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return f"{header}.{claims}.{sig}"


@pytest.fixture
def user() -> Callable[[str], str]:
    """Unique user names, so tests sharing a router never see each other's messages."""

    def make(prefix: str = "u") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def connect(router: Router) -> Iterator[Callable[..., ringrouter.Client]]:
    """Connects clients to the session router; closes them at the end of the test."""
    clients: List[ringrouter.Client] = []

    def make(user: str, **kw: object) -> ringrouter.Client:
        c = ringrouter.Client(router.addr, user, **kw)  # type: ignore[arg-type]
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def accounts_connect(accounts_router: Router) -> Iterator[Callable[..., ringrouter.Client]]:
    """Connects clients to the --auth accounts router; closes them at the end of the test."""
    clients: List[ringrouter.Client] = []

    def make(user: str, password: str, **kw: object) -> ringrouter.Client:
        c = ringrouter.Client(accounts_router.addr, user, password=password, **kw)  # type: ignore[arg-type]
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def run_python(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Runs this interpreter with ``args`` (a module, an example), capturing output."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(PYTHON_CLIENT),
    )


def recv_messages(
    c: ringrouter.Client, n: int, timeout: float = 5.0, events: Optional[List[ringrouter.Event]] = None
) -> List[ringrouter.Message]:
    """The next ``n`` messages of ``c``; room events met on the way go to ``events``."""
    out: List[ringrouter.Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} messages"
        m = c.recv(timeout=left)
        if isinstance(m, ringrouter.Message):
            out.append(m)
        elif isinstance(m, ringrouter.Event) and events is not None:
            events.append(m)
    return out


def wait_event(
    c: ringrouter.Client, kind: str, room: str, user: str, timeout: float = 5.0
) -> ringrouter.Event:
    """Reads ``c`` until the room event (kind, room, user) comes; other events and
    messages met on the way are dropped."""
    seen: List[object] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} event for {user} in {room}; got {seen!r}"
        ev = c.recv(timeout=left)
        if isinstance(ev, ringrouter.Event) and (ev.kind, ev.room, ev.user) == (kind, room, user):
            return ev
        if ev is not None:
            seen.append(ev)


def assert_quiet(c: ringrouter.Client, wait: float = 0.3) -> None:
    """Nothing but room events arrives on ``c`` for ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        m = c.recv(timeout=left)
        assert not isinstance(m, ringrouter.Message), f"unexpected {m!r}"


def params(fn: object) -> list:
    """``fn``'s parameters as (name, kind name, default or None), ``self`` left out:
    what the API contract tests compare."""
    import inspect

    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [
        (p.name, p.kind.name, None if p.default is inspect.Parameter.empty else p.default)
        for p in sig.parameters.values()
        if p.name != "self"
    ]

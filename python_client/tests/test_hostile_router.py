"""The client against a broken or hostile router (a scripted fake, fake_router.py):
memory bounds, reconnect backoff, Ctrl-C, protocol errors, timeouts."""

from __future__ import annotations

import _thread
import base64
import hashlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fake_router as fr
import ringrouter

HERE = Path(__file__).resolve().parent


def silent(c, f) -> None:
    """Logged in, then reads everything and answers nothing."""
    fr.read_all(f)


def deaf(c, f) -> None:
    """Logged in, then never reads nor closes."""
    time.sleep(30)


def interrupt_after(delay: float) -> threading.Timer:
    """Simulates a Ctrl-C (SIGINT) in the main thread after `delay` seconds."""
    t = threading.Timer(delay, _thread.interrupt_main)
    t.daemon = True
    t.start()
    return t


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("mode", ["sender", "pad", "presence", "error", "ping"])
def test_memory_stays_bounded_when_the_script_does_not_recv(mode: str) -> None:
    # Long sender names, padded frames (unknown fields), big presence texts, Error
    # frames, Pings while the router never reads: the client held all of it (>1.5 GB
    # in 3 s; Pongs 165 MB). The receive queue's bound is 64 MiB.
    out = subprocess.run(
        [sys.executable, str(HERE / "hostile_memory.py"), mode, "3"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    grew = float(out.stdout.strip())
    assert grew < (80 if mode == "ping" else 400), f"{mode}: grew {grew} MB"


def test_a_router_dropping_every_login_is_not_hammered() -> None:
    def drop(c, f) -> None:
        c.close()

    srv = fr.FakeRouter(drop)
    c = ringrouter.Client(srv.addr, "alice", timeout=2.0, reconnect=True)
    try:
        time.sleep(1.5)
        # 20, 40, 80, ... ms before each attempt: ~7 in 1.5 s (it was ~9 000 a second).
        assert srv.logins <= 15, srv.logins
        assert c.reconnects <= 15
    finally:
        c.close()
        srv.close()


@pytest.mark.parametrize("what", ["rooms", "send_wait", "close"])
def test_ctrl_c_interrupts_requests_and_close(what: str) -> None:
    srv = fr.FakeRouter(deaf if what == "close" else silent)
    c = ringrouter.Client(srv.addr, "alice", timeout=30.0)
    try:
        interrupt_after(0.3)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            if what == "rooms":
                c.rooms()
            elif what == "send_wait":
                c.send("bob", b"x", wait=True)
            else:
                c.close()
        assert time.monotonic() - t0 < 2.0
        if what == "close":
            assert c.closed
    finally:
        c.close()
        srv.close()


def test_ctrl_c_interrupts_the_login() -> None:
    srv = fr.FakeRouter(silent, login=False)
    interrupt_after(0.3)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        ringrouter.Client(srv.addr, "alice", timeout=30.0)
    assert time.monotonic() - t0 < 2.0
    srv.close()


def test_close_ends_a_request_waiting_in_another_thread() -> None:
    # The router reads the Logout and keeps the connection: close() waits for it (up
    # to the timeout), the request in the other thread ends at once.
    def reads_never_closes(c, f) -> None:
        fr.read_all(f)
        time.sleep(30)

    srv = fr.FakeRouter(reads_never_closes)
    c = ringrouter.Client(srv.addr, "alice", timeout=30.0)
    got = []

    def wait() -> None:
        try:
            c.rooms()
        except BaseException as e:  # noqa: BLE001
            got.append(e)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    threading.Thread(target=c.close, daemon=True).start()
    t.join(5)
    assert not t.is_alive(), "the request still waits"
    assert time.monotonic() - t0 < 2.0
    assert len(got) == 1 and isinstance(got[0], ringrouter.ConnectionClosed), got
    srv.close()


def test_bad_bytes_mid_session_are_a_protocol_error_then_closed() -> None:
    def garbage(c, f) -> None:
        c.sendall(fr.deliver(1, payload=b"before") + fr.frame(b"\xff" * 6))
        time.sleep(5)

    srv = fr.FakeRouter(garbage)
    c = ringrouter.Client(srv.addr, "alice", timeout=2.0)
    try:
        m = c.recv(timeout=5)
        assert m is not None and m.payload == b"before"
        with pytest.raises(ringrouter.RouterError) as info:
            c.recv(timeout=5)
        assert not isinstance(info.value, ringrouter.ConnectionClosed)
        assert info.value.code == "PROTOCOL"
        with pytest.raises(ringrouter.ConnectionClosed):
            c.recv(timeout=5)
    finally:
        c.close()
        srv.close()


def test_the_timeout_bounds_the_websocket_upgrade_and_the_login_together() -> None:
    # The upgrade is answered after 0.6 s, the Login never: timeout=1 is 1 s in all.
    def ws(c, f) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            b = f.read(1)
            if not b:
                return
            head += b
        key = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
               if ln.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        time.sleep(0.6)
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                  + b"\r\nSec-WebSocket-Protocol: ringrouter.v1\r\n\r\n")
        time.sleep(10)

    srv = fr.FakeRouter(ws, login=False)
    t0 = time.monotonic()
    with pytest.raises((TimeoutError, ringrouter.RouterError)):
        ringrouter.Client(srv.addr, "alice", timeout=1.0, transport="ws")
    took = time.monotonic() - t0
    assert took < 1.4, took
    srv.close()

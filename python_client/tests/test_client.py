"""The Python client against a real router."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List

import pytest

import ringrouter
from conftest import JWT_SECRET, Router, make_jwt

T = 5.0


def recv_n(c: ringrouter.Client, n: int, timeout: float = T) -> List[ringrouter.Message]:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} messages"
        m = c.recv(timeout=left)
        if m is not None:
            out.append(m)
    return out


def test_login(router: Router, user: Callable[[str], str]) -> None:
    name = user("login")
    with ringrouter.Client(router.addr, name) as c:
        assert c.user == name
        assert isinstance(c.session_id, int) and c.session_id != 0
        assert not c.closed
        assert c.recv(timeout=0) is None
    assert c.closed


def test_dm_between_two_clients(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice = connect(a_name)
    bob = connect(b_name, device="laptop")
    alice.send(b_name, b"hello bob", wait=True)
    alice.send(b_name, b"")  # an empty payload is a message too
    alice.send(b_name, bytes(range(256)) * 100)
    m1, m2, m3 = recv_n(bob, 3)
    assert isinstance(m1, ringrouter.Message)
    assert m1.sender == a_name
    assert m1.room is None
    assert m1.payload == b"hello bob"
    assert m2.payload == b""
    assert m3.payload == bytes(range(256)) * 100
    # Bob's session got nothing before: its sequence numbers start at 1.
    assert [m.seq for m in (m1, m2, m3)] == [1, 2, 3]
    assert len({m1.msg_id, m2.msg_id, m3.msg_id}) == 3
    now_us = time.time() * 1e6
    assert abs(m1.timestamp_us - now_us) < 60e6
    assert "hello bob" in repr(m1)
    # And back.
    bob.send(a_name, b"hi alice")
    (r,) = recv_n(alice, 1)
    assert (r.sender, r.payload) == (b_name, b"hi alice")


def test_order_many_small_messages(connect, user) -> None:
    a_name, b_name = user("a"), user("b")
    a, b = connect(a_name), connect(b_name)
    n = 20_000
    for i in range(n):
        a.send(b_name, i.to_bytes(4, "little"))
    got = recv_n(b, n, timeout=30)
    assert [int.from_bytes(m.payload, "little") for m in got] == list(range(n))


def test_send_many(connect, user) -> None:
    a_name, b_name = user("a"), user("b")
    a, b = connect(a_name), connect(b_name)
    payloads = [b"m%d" % i for i in range(10_000)]
    assert a.send_many(b_name, iter(payloads)) == len(payloads)
    assert a.flush(timeout=T)
    assert [m.payload for m in recv_n(b, len(payloads), timeout=30)] == payloads
    with pytest.raises(TypeError):
        a.send_many(b_name, ["not bytes"])  # type: ignore[list-item]


def test_multi_device(connect, user) -> None:
    a_name, b_name = user("a"), user("b")
    a = connect(a_name)
    phone = connect(b_name, device="phone")
    laptop = connect(b_name, device="laptop")
    assert phone.session_id != laptop.session_id
    a.send(b_name, b"to every device", wait=True)
    for dev in (phone, laptop):
        (m,) = recv_n(dev, 1)
        assert (m.sender, m.payload) == (a_name, b"to every device")
    # A user's own other devices get what it sends to itself.
    phone.send(b_name, b"note to self", wait=True)
    for dev in (phone, laptop):
        (m,) = recv_n(dev, 1)
        assert (m.sender, m.payload) == (b_name, b"note to self")


def test_send_to_user_without_session_raises_not_found(connect, user) -> None:
    a = connect(user("a"))
    with pytest.raises(ringrouter.RouterError) as info:
        a.send(user("nobody"), b"anyone?", wait=True)
    err = info.value
    assert err.code == "NOT_FOUND"
    assert err.status is ringrouter.Status.NOT_FOUND
    assert err.status == 6  # an IntEnum: the wire value
    assert err.reason
    assert "NOT_FOUND" in str(err)
    assert not isinstance(err, (ringrouter.AuthError, ringrouter.ConnectionClosed))
    # The connection is still usable.
    b_name = user("b")
    b = connect(b_name)
    a.send(b_name, b"still here", wait=True)
    assert recv_n(b, 1)[0].payload == b"still here"


def test_exception_hierarchy() -> None:
    assert issubclass(ringrouter.RouterError, Exception)
    assert issubclass(ringrouter.AuthError, ringrouter.RouterError)
    assert issubclass(ringrouter.ConnectionClosed, ringrouter.RouterError)
    assert ringrouter.RouterError.__module__ == "ringrouter"
    assert ringrouter.RouterError.__name__ == "RouterError"


def test_bad_jwt_raises_auth_error(jwt_router: Router, user) -> None:
    with pytest.raises(ringrouter.AuthError) as info:
        ringrouter.Client(jwt_router.addr, "", token=make_jwt(b"not the secret", "mallory"))
    assert info.value.code == "UNAUTHORIZED"
    assert info.value.status is ringrouter.Status.UNAUTHORIZED
    assert "token" in info.value.reason
    with pytest.raises(ringrouter.AuthError) as info:
        ringrouter.Client(jwt_router.addr, "mallory")  # no token at all
    assert info.value.status is ringrouter.Status.UNAUTHORIZED, info.value
    with pytest.raises(ringrouter.AuthError) as info:
        ringrouter.Client(jwt_router.addr, "", token=make_jwt(JWT_SECRET, "alice", ttl=-60))
    assert info.value.status is ringrouter.Status.UNAUTHORIZED, info.value


def test_good_jwt_logs_in_as_subject(jwt_router: Router, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    with ringrouter.Client(jwt_router.addr, "", token=make_jwt(JWT_SECRET, a_name)) as a, \
            ringrouter.Client(jwt_router.addr, b_name, token=make_jwt(JWT_SECRET, b_name)) as b:
        assert a.user == a_name
        a.send(b_name, b"signed", wait=True)
        (m,) = recv_n(b, 1)
        assert (m.sender, m.payload) == (a_name, b"signed")


def test_connect_refused_is_oserror(closed_port_addr: str) -> None:
    with pytest.raises(ConnectionRefusedError):
        ringrouter.Client(closed_port_addr, "nobody", timeout=2.0)


def test_login_timeout_is_timeout_error() -> None:
    """A server that accepts but never answers the Login: TimeoutError after `timeout`."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        host, port = silent.getsockname()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            ringrouter.Client(f"{host}:{port}", "x", timeout=0.3)
        assert 0.25 <= time.monotonic() - t0 < 3.0


def test_invalid_timeout_is_value_error(router: Router) -> None:
    with pytest.raises(ValueError):
        ringrouter.Client(router.addr, "x", timeout=-1.0)


def test_closed_client_raises_connection_closed(router: Router, user) -> None:
    c = ringrouter.Client(router.addr, user("c"))
    c.close()
    c.close()  # idempotent
    assert c.closed
    with pytest.raises(ringrouter.ConnectionClosed) as info:
        c.send("someone", b"x")
    assert info.value.code == "CLOSED"
    assert info.value.status is None  # not a protocol status
    with pytest.raises(ringrouter.ConnectionClosed):
        c.send("someone", b"x", wait=True)
    with pytest.raises(ringrouter.ConnectionClosed):
        c.recv(timeout=1.0)
    assert list(c) == []


def test_router_going_away_raises_connection_closed(own_router, user, tmp_path) -> None:
    store = str(tmp_path / "store")
    r = own_router("--data-dir", store)
    a_name, b_name = user("a"), user("b")
    a = ringrouter.Client(r.addr, a_name)
    b = ringrouter.Client(r.addr, b_name)
    a.send(b_name, b"before shutdown", wait=True)
    # An OK answer means delivered *or stored*: give the delivery time to reach b.
    time.sleep(0.2)
    r.terminate()
    # What arrived before the close is still handed out; then ConnectionClosed
    # (possibly after the router's own "shutting down" error).
    got = []
    with pytest.raises(ringrouter.ConnectionClosed):
        for _ in range(10):
            try:
                m = b.recv(timeout=T)
            except ringrouter.ConnectionClosed:
                raise
            except ringrouter.RouterError as e:
                assert (e.code, e.status) == ("UNAVAILABLE", ringrouter.Status.UNAVAILABLE), e
                continue
            assert m is not None, "no ConnectionClosed in time"
            got.append(m.payload)
    if not got:
        # The router took the message but shut down before delivering it: then
        # it stored it, and b gets it at its next login.
        r2 = own_router("--data-dir", store)
        with ringrouter.Client(r2.addr, b_name) as b2:
            m = b2.recv(timeout=T)
            assert m is not None and m.payload == b"before shutdown", m
    else:
        assert got == [b"before shutdown"]
    deadline = time.monotonic() + T
    while time.monotonic() < deadline:
        try:
            a.send(b_name, b"after")
        except ringrouter.ConnectionClosed:
            break
        time.sleep(0.05)
    else:
        pytest.fail("send on a connection the router closed did not raise ConnectionClosed")
    a.close()
    b.close()


def test_iteration_stops_when_connection_closes(connect, user) -> None:
    a_name, b_name = user("a"), user("b")
    a = connect(a_name)
    b = connect(b_name)
    for i in range(5):
        a.send(b_name, b"%d" % i)
    got: List[bytes] = []

    def consume() -> None:
        for m in b:
            got.append(m.payload)
            if len(got) == 5:
                break
        # A second loop after close: ends at once.
        for m in b:
            got.append(m.payload)

    t = threading.Thread(target=consume)
    t.start()
    deadline = time.monotonic() + T
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    b.close()  # ends the second loop from another thread
    t.join(T)
    assert not t.is_alive(), "iteration did not stop when the connection closed"
    assert got == [b"%d" % i for i in range(5)]


def test_recv_timeout(connect, user) -> None:
    c = connect(user("idle"))
    t0 = time.monotonic()
    assert c.recv(timeout=0.2) is None
    assert 0.15 <= time.monotonic() - t0 < 2.0


def test_send_from_one_thread_recv_in_another(connect, user) -> None:
    """One Client, two threads: blocking recv must not block send."""
    a_name, b_name = user("a"), user("b")
    a, b = connect(a_name), connect(b_name)
    got: List[bytes] = []

    def echo() -> None:
        for m in a:  # a receives b's replies while the main thread sends on a
            got.append(m.payload)
            if len(got) == 100:
                return

    t = threading.Thread(target=echo)
    t.start()
    for i in range(100):
        a.send(b_name, b"ping %d" % i)
        m = b.recv(timeout=T)
        assert m is not None and m.payload == b"ping %d" % i
        b.send(a_name, b"pong %d" % i)
    t.join(T)
    assert got == [b"pong %d" % i for i in range(100)]


def test_send_many_stops_at_an_item_that_is_not_bytes(connect, user) -> None:
    # Everything before the bad item is queued (over a chunk of 4 096), nothing after.
    a_name, b_name = user("a"), user("b")
    a, b = connect(a_name), connect(b_name)
    payloads = [b"m%d" % i for i in range(5000)]
    with pytest.raises(TypeError, match=r"payloads\[5000\].*5000 before it were queued"):
        a.send_many(b_name, [*payloads, "not bytes", b"after"])  # type: ignore[list-item]
    assert a.flush(timeout=T)
    assert [m.payload for m in recv_n(b, len(payloads), timeout=30)] == payloads
    assert b.recv(timeout=0.5) is None

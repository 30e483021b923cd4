"""Arguments the client checks itself (clear ValueError / TypeError naming the argument,
nothing sent), and calls that must not hang or surface what they recover from."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterator

import pytest

import ringrouter
from ringrouter import RouterError, Status, load

from conftest import Router, recv_messages, run_python


@pytest.fixture
def silent_addr() -> Iterator[str]:
    """An address that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield "%s:%d" % s.getsockname()
    s.close()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


# ------------------------------------------------------------------- durations


def test_client_timeout_zero_and_too_large_are_clear_value_errors(
    router: Router, user: Callable[[str], str]
) -> None:
    with pytest.raises(ValueError, match=r"timeout must be more than 0 seconds"):
        ringrouter.Client(router.addr, user("t"), timeout=0)
    for huge in (float("inf"), 1e300, 1e12):
        with pytest.raises(ValueError, match=r"timeout is too large: at most"):
            ringrouter.Client(router.addr, user("t"), timeout=huge)
    with pytest.raises(ValueError, match=r"timeout must be a non-negative number"):
        ringrouter.Client(router.addr, user("t"), timeout=-1)
    with pytest.raises(ValueError, match=r"timeout must be a non-negative number"):
        ringrouter.Client(router.addr, user("t"), timeout=float("nan"))


def test_recv_and_flush_take_inf_as_no_limit(
    connect: Callable[..., ringrouter.Client], user: Callable[[str], str]
) -> None:
    a_name, b_name = user("a"), user("b")
    a, b = connect(a_name), connect(b_name)
    a.send(b_name, b"hi", wait=True)
    assert a.flush(float("inf")) is True
    assert a.flush(1e300) is True
    m = b.recv(timeout=float("inf"))
    assert isinstance(m, ringrouter.Message) and m.payload == b"hi"
    a.send(b_name, b"again", wait=True)
    m = b.recv(timeout=1e300)
    assert isinstance(m, ringrouter.Message) and m.payload == b"again"
    with pytest.raises(ValueError, match="timeout must be a non-negative number"):
        b.recv(timeout=-1)


def test_load_run_duration_too_large_names_the_argument(router: Router) -> None:
    with pytest.raises(ValueError, match=r"duration is too large"):
        load.run(router.addr, pairs=1, duration=1e20)
    with pytest.raises(ValueError, match=r"duration must be a non-negative number"):
        load.run(router.addr, pairs=1, duration=-1)


# -------------------------------------------------------------- load CLI flags


@pytest.mark.parametrize(
    "flag,value",
    [("--pairs", "-1"), ("--messages", "-5"), ("--pairs", "0"), ("--size", "-3"),
     ("--fanout", "0"), ("--window", "-2"), ("--threads", "-1"), ("--duration", "-1"),
     ("--rate", "0"), ("--pairs", "many")],
)
def test_load_cli_refuses_bad_numbers_naming_the_flag(flag: str, value: str) -> None:
    p = run_python("-m", "ringrouter.load", flag, value, "--quiet")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"argument {flag}" in p.stderr, p.stderr
    assert "convert" not in p.stderr, p.stderr


# ------------------------------------------------------------------ create_room


def test_create_room_members_any_iterable_of_str(
    connect: Callable[..., ringrouter.Client], user: Callable[[str], str]
) -> None:
    owner, m_name = connect(user("o")), user("m")
    connect(m_name)
    for i, members in enumerate([
        (x for x in [m_name]),  # a generator
        {m_name},
        (m_name,),
        [m_name],
        iter([m_name]),
        {m_name: 1}.keys(),
    ]):
        room = user(f"r{i}")
        owner.create_room(room, members=members)  # type: ignore[arg-type]
        assert owner.room_info(room).members == sorted([owner.user, m_name])
    with pytest.raises(TypeError, match=r"members must be an iterable of user names \(str\), not a str"):
        owner.create_room(user("r"), members=m_name)
    with pytest.raises(TypeError, match=r"members must hold user names \(str\), not NoneType"):
        owner.create_room(user("r"), members=[None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"members must be an iterable of user names \(str\), not int"):
        owner.create_room(user("r"), members=5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ empty names


def test_empty_recipient_is_a_value_error_naming_it(
    connect: Callable[..., ringrouter.Client], user: Callable[[str], str]
) -> None:
    a = connect(user("a"))
    for wait in (False, True):
        with pytest.raises(ValueError, match=r"^to must not be empty \(a user name\)$"):
            a.send("", b"x", wait=wait)
        with pytest.raises(ValueError, match=r"^room must not be empty \(a room name\)$"):
            a.send_room("", b"x", wait=wait)
        with pytest.raises(ValueError, match=r"^to must not be empty"):
            a.send("", b"x", wait=wait, ephemeral=True)
    with pytest.raises(ValueError, match=r"^to must not be empty"):
        a.send_many("", [b"x"])
    # Nothing was sent: the router has no complaint for recv.
    assert a.recv(timeout=0.3) is None
    assert not a.closed


# ---------------------------------------------------------------------- register


def test_register_takes_a_timeout(silent_addr: str, accounts_router: Router, user: Callable[[str], str]) -> None:
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        ringrouter.Client.register(silent_addr, user("r"), "pw", timeout=0.5)
    assert time.monotonic() - t < 3.0
    with pytest.raises(ValueError, match="timeout must be more than 0"):
        ringrouter.Client.register(accounts_router.addr, user("r"), "pw", timeout=0)
    name = user("r")
    ringrouter.Client.register(accounts_router.addr, name, "correct horse", timeout=10)
    ringrouter.Client(accounts_router.addr, name, password="correct horse").close()


# ------------------------------------------------------------- history limits


def test_history_and_conversations_check_their_arguments(
    connect: Callable[..., ringrouter.Client], user: Callable[[str], str]
) -> None:
    a, b_name = connect(user("a")), user("b")
    connect(b_name)
    a.send(b_name, b"kept", wait=True)
    for bad in (-1, -(2**40), 2**40):
        with pytest.raises(ValueError, match=r"limit must be 0 to the router's --history-page-max"):
            a.history(user=b_name, limit=bad)
        with pytest.raises(ValueError, match=r"limit must be 1 to the router's --history-page-max"):
            a.conversations(bad)
    with pytest.raises(ValueError, match=r"limit must be 1 to"):
        a.conversations(0)
    with pytest.raises(ValueError, match=r"give user= .* or room=: neither was given"):
        a.history()
    with pytest.raises(ValueError, match=r"not both"):
        a.history(user=b_name, room="r")
    with pytest.raises(ValueError, match=r"before_us must be a timestamp"):
        a.conversations(before_us=-1)
    # What is allowed still works.
    assert [m.payload for m in a.history(user=b_name, limit=0)] == [b"kept"]
    assert [m.payload for m in a.history(user=b_name, limit=1)] == [b"kept"]
    assert [c.user for c in a.conversations(1)] == [b_name]
    assert [c.user for c in a.conversations(before_us=None)] == [b_name]  # type: ignore[arg-type]


# ------------------------------------------------------------- frame too large


def test_a_frame_over_the_routers_limit_is_refused_before_sending(
    connect: Callable[..., ringrouter.Client], user: Callable[[str], str]
) -> None:
    a_name, b_name = user("a"), user("b")
    a, b = connect(a_name), connect(b_name)
    room = user("room")
    a.create_room(room, members=[b_name])
    big = b"x" * (1 << 20)  # the payload alone fills the router's 1 MiB frame
    for call in (
        lambda: a.send(b_name, big, wait=True),
        lambda: a.send(b_name, big),
        lambda: a.send(b_name, big, ephemeral=True),
        lambda: a.send_room(room, big, wait=True),
        lambda: a.send_room(room, big),
        lambda: a.send_many(b_name, [b"small", big]),
    ):
        with pytest.raises(RouterError) as e:
            call()
        assert e.value.status == Status.TOO_LARGE and e.value.code == "TOO_LARGE"
        assert "max frame" in e.value.reason
    # The connection is still open: the router never saw those frames.
    a.send(b_name, b"still here", wait=True)
    got = [m.payload for m in recv_messages(b, 2)]
    assert got == [b"small", b"still here"]
    assert not a.closed


def test_a_frame_over_the_limit_with_reconnect(
    router: Router, user: Callable[[str], str]
) -> None:
    b_name = user("b")
    with ringrouter.Client(router.addr, user("a"), reconnect=True) as a, ringrouter.Client(
        router.addr, b_name
    ) as b:
        with pytest.raises(RouterError, match="TOO_LARGE"):
            a.send(b_name, b"x" * (1 << 20))
        a.send(b_name, b"ok", wait=True)
        assert [m.payload for m in recv_messages(b, 1)] == [b"ok"]
        assert a.reconnects == 0


# ------------------------------------------------------- send_many and Ctrl-C


class _Interrupted(Exception):
    pass


def test_send_many_to_a_stopped_router_sees_signals(
    own_router: Callable[..., Router], user: Callable[[str], str]
) -> None:
    r = own_router("--http-listen", "off")
    a_name, b_name = user("a"), user("b")
    ringrouter.Client(r.addr, b_name).close()
    a = ringrouter.Client(r.addr, a_name)

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted()

    old = signal.signal(signal.SIGUSR1, interrupt)
    os.kill(r.proc.pid, signal.SIGSTOP)
    poke = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    # Without signal checks send_many would block for good: let it go after a while.
    rescue = threading.Timer(10.0, lambda: r.proc.kill())
    poke.start()
    rescue.start()
    t = time.monotonic()
    try:
        with pytest.raises(_Interrupted):
            a.send_many(b_name, [b"y" * 100_000] * 100)  # 10 MB: more than the send buffer
        elapsed = time.monotonic() - t
    finally:
        poke.cancel()
        rescue.cancel()
        signal.signal(signal.SIGUSR1, old)
        os.kill(r.proc.pid, signal.SIGCONT)
    assert elapsed < 5.0, f"send_many saw the signal after {elapsed:.1f} s"
    a.close()


# -------------------------------------------- reconnect across a router restart


def test_recv_does_not_raise_the_shutdown_it_reconnects_from(
    own_router: Callable[..., Router], user: Callable[[str], str], tmp_path: object
) -> None:
    port = free_port()
    data = str(tmp_path)
    args = ("--listen", f"127.0.0.1:{port}", "--http-listen", "off", "--data-dir", data)
    r = own_router(*args)
    a_name, b_name = user("a"), user("b")
    a = ringrouter.Client(r.addr, a_name, reconnect=True)
    b = ringrouter.Client(r.addr, b_name, reconnect=True)
    try:
        a.send(b_name, b"before", wait=True)
        assert [m.payload for m in recv_messages(b, 1)] == [b"before"]
        got: list = []

        def receive() -> None:
            # Blocked in recv while the router shuts down (its Error UNAVAILABLE
            # "shutting down" comes), and through the restart.
            try:
                got.append(b.recv(timeout=30))
            except Exception as e:  # noqa: BLE001 - what the test checks
                got.append(e)

        t = threading.Thread(target=receive)
        t.start()
        time.sleep(0.2)
        assert r.terminate() is not None
        a.send(b_name, b"during the outage")
        time.sleep(0.3)
        own_router(*args)
        t.join(30)
        assert len(got) == 1 and isinstance(got[0], ringrouter.Message), got
        assert got[0].payload == b"during the outage"
        assert b.reconnects >= 1 and not b.closed
    finally:
        a.close()
        b.close()

"""Rooms through the Python client, against a real router (open auth)."""

from __future__ import annotations

import threading
from typing import Callable, List

import pytest

import ringrouter
from conftest import assert_quiet, params, recv_messages, wait_event


def room_name(user: Callable[[str], str]) -> str:
    # Unique per test: the session's router is shared.
    return user("room")


def refused(code: str, fn: Callable[..., object], *args: object) -> ringrouter.RouterError:
    with pytest.raises(ringrouter.RouterError) as info:
        fn(*args)
    assert info.value.code == code, info.value
    assert info.value.status is ringrouter.Status[code], info.value
    assert not isinstance(info.value, (ringrouter.AuthError, ringrouter.ConnectionClosed))
    return info.value


def test_create_and_join_by_name_and_by_code(connect, user) -> None:
    a_name, b_name, c_name = user("alice"), user("bob"), user("carol")
    alice, bob, carol = connect(a_name), connect(b_name), connect(c_name)
    room = room_name(user)
    code = alice.create_room(room)
    assert isinstance(code, str) and code
    assert code != room
    assert bob.join_room(room) == room
    # By join code: the answer names the room.
    assert carol.join_room(code) == room
    for c in (alice, bob, carol):
        assert room in c.rooms()
    # The members already in the room hear about the newcomers, as Event objects.
    ev = wait_event(alice, "joined", room, b_name)
    assert isinstance(ev, ringrouter.Event)
    assert (ev.kind, ev.room, ev.user) == ("joined", room, b_name)
    assert "joined" in repr(ev) and room in repr(ev)
    wait_event(alice, "joined", room, c_name)
    wait_event(bob, "joined", room, c_name)


def test_event_objects_compare_and_hash(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob = connect(a_name), connect(b_name)
    room = room_name(user)
    alice.create_room(room)
    bob.join_room(room)
    ev = wait_event(alice, "joined", room, b_name)
    # The same event seen by bob himself (the user concerned gets it too).
    ev_b = wait_event(bob, "joined", room, b_name)
    assert ev == ev_b and hash(ev) == hash(ev_b)
    assert ev != "joined"
    with pytest.raises(AttributeError):
        ev.kind = "left"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ringrouter.Event()  # type: ignore[call-arg]


def test_unknown_room_or_code_is_not_found(connect, user) -> None:
    alice = connect(user("alice"))
    refused("NOT_FOUND", alice.join_room, user("no-such-room"))
    refused("NOT_FOUND", alice.join_room, "ZZZZZZZZ-no-such-code")


def test_taken_name_is_conflict(connect, user) -> None:
    alice, bob = connect(user("alice")), connect(user("bob"))
    room = room_name(user)
    alice.create_room(room)
    refused("CONFLICT", bob.create_room, room)
    refused("CONFLICT", alice.create_room, room)


def test_room_password(connect, user) -> None:
    alice, bob = connect(user("alice")), connect(user("bob"))
    room = room_name(user)
    code = alice.create_room(room, password="s3cret")
    refused("FORBIDDEN", bob.join_room, room)
    refused("FORBIDDEN", bob.join_room, room, "wrong")
    # The join code alone is not enough either.
    refused("FORBIDDEN", bob.join_room, code)
    refused("FORBIDDEN", bob.join_room, code, "wrong")
    assert room not in bob.rooms()
    assert bob.join_room(code, "s3cret") == room
    assert room in bob.rooms()
    # Keyword form.
    carol = connect(user("carol"))
    assert carol.join_room(room, password="s3cret") == room


def test_room_password_positional_or_keyword(connect, user) -> None:
    """create_room(name, password=None, *, members=()): the password may be given
    positionally (issue 5's create_room(name, password=None)) or by keyword."""
    alice, bob, carol = connect(user("alice")), connect(user("bob")), connect(user("carol"))
    positional, keyword = room_name(user), room_name(user)
    codes = {
        positional: alice.create_room(positional, "secret"),
        keyword: alice.create_room(keyword, password="secret"),
    }
    for room, code in codes.items():
        assert isinstance(code, str) and code and code != room
        refused("FORBIDDEN", bob.join_room, room)
        refused("FORBIDDEN", bob.join_room, room, "wrong")
        refused("FORBIDDEN", bob.join_room, code, "wrong")
        assert room not in bob.rooms()
        assert bob.join_room(room, "secret") == room
        assert carol.join_room(code, password="secret") == room
        assert room in bob.rooms() and room in carol.rooms()
    # members stays keyword-only: a third positional argument is a TypeError.
    with pytest.raises(TypeError):
        alice.create_room(room_name(user), "secret", [])  # type: ignore[misc]


def test_owner_only_operations(connect, user) -> None:
    a_name, b_name, c_name = user("owner"), user("member"), user("other")
    owner, member, other = connect(a_name), connect(b_name), connect(c_name)
    room = room_name(user)
    owner.create_room(room)
    member.join_room(room)
    # A member who is not the owner may not manage the room.
    refused("FORBIDDEN", member.add_member, room, c_name)
    refused("FORBIDDEN", member.remove_member, room, a_name)
    refused("FORBIDDEN", member.delete_room, room)
    # Nor may someone outside it.
    refused("FORBIDDEN", other.delete_room, room)
    assert room in owner.rooms() and room in member.rooms()
    assert room not in other.rooms()
    # The owner may.
    owner.add_member(room, c_name)
    wait_event(other, "joined", room, c_name)
    assert room in other.rooms()
    owner.remove_member(room, b_name)
    wait_event(member, "removed", room, b_name)
    assert room not in member.rooms()
    owner.delete_room(room)
    wait_event(other, "deleted", room, a_name)
    for c in (owner, member, other):
        assert room not in c.rooms()
    refused("NOT_FOUND", other.join_room, room)


def test_send_room_reaches_every_member_and_device_in_order(connect, user) -> None:
    a_name, b_name, c_name = user("alice"), user("bob"), user("carol")
    alice = connect(a_name, device="phone")
    alice_laptop = connect(a_name, device="laptop")
    bob, carol = connect(b_name), connect(c_name)
    room = room_name(user)
    alice.create_room(room)
    bob.join_room(room)
    carol.join_room(room)
    n = 200
    for i in range(n - 1):
        alice.send_room(room, b"m%d" % i)
    alice.send_room(room, b"m%d" % (n - 1), wait=True)
    want = [b"m%d" % i for i in range(n)]
    # Every member, and the sender's other device.
    for c in (bob, carol, alice_laptop):
        got = recv_messages(c, n, timeout=30)
        assert [m.payload for m in got] == want
        assert all((m.sender, m.room) == (a_name, room) for m in got)
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == n
        ids = [m.msg_id for m in got]
        assert len(set(ids)) == n
    # And back from another member.
    bob.send_room(room, b"hi alice", wait=True)
    for c in (carol, alice_laptop):
        (m,) = recv_messages(c, 1)
        assert (m.sender, m.room, m.payload) == (b_name, room, b"hi alice")


def test_leave_room(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob = connect(a_name), connect(b_name)
    room = room_name(user)
    alice.create_room(room)
    bob.join_room(room)
    wait_event(alice, "joined", room, b_name)
    bob.leave_room(room)
    wait_event(alice, "left", room, b_name)
    assert room not in bob.rooms()
    alice.send_room(room, b"after bob left", wait=True)
    assert_quiet(bob)
    # He may come back.
    assert bob.join_room(room) == room
    alice.send_room(room, b"welcome back", wait=True)
    (m,) = recv_messages(bob, 1)
    assert m.payload == b"welcome back"


def test_rooms_lists_only_own_memberships(connect, user) -> None:
    alice, bob = connect(user("alice")), connect(user("bob"))
    mine: List[str] = [room_name(user) for _ in range(3)]
    for r in mine:
        alice.create_room(r)
    assert sorted(set(alice.rooms()) & set(mine)) == sorted(mine)
    assert not set(bob.rooms()) & set(mine)


def test_iteration_yields_events_and_messages(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob = connect(a_name), connect(b_name)
    room = room_name(user)
    alice.create_room(room)
    bob.join_room(room)
    bob.send_room(room, b"hello", wait=True)
    kinds = []
    # Should "hello" never come, the close ends the loop (and the test fails) instead
    # of the test hanging.
    watchdog = threading.Timer(10.0, alice.close)
    watchdog.start()
    for item in alice:
        if isinstance(item, ringrouter.Event):
            kinds.append(("event", item.kind, item.user))
        else:
            kinds.append(("message", item.payload))
            break
    watchdog.cancel()
    assert ("event", "joined", b_name) in kinds
    assert kinds[-1] == ("message", b"hello")


def test_api_contract() -> None:
    """The names and signatures of the room and account API, as promised."""
    import inspect

    C = ringrouter.Client
    pos = "POSITIONAL_OR_KEYWORD"
    assert isinstance(inspect.getattr_static(C, "register"), staticmethod)
    kw = "KEYWORD_ONLY"
    transport_kw = [("tls", kw, False), ("ca_file", kw, None), ("transport", kw, "tcp")]
    assert params(C.register) == [
        ("addr", pos, None), ("user", pos, None), ("password", pos, None),
        ("timeout", kw, 5.0), *transport_kw,
    ]
    assert params(C.create_room) == [
        ("name", pos, None), ("password", pos, None), ("members", kw, ()),
    ]
    assert params(C.join_room) == [("name_or_code", pos, None), ("password", pos, None)]
    assert params(C.leave_room) == [("room", pos, None)]
    assert params(C.add_member) == [("room", pos, None), ("user", pos, None)]
    assert params(C.remove_member) == [("room", pos, None), ("user", pos, None)]
    assert params(C.delete_room) == [("room", pos, None)]
    assert params(C.rooms) == []
    assert params(C.send_room) == [
        ("room", pos, None), ("payload", pos, None), ("wait", "KEYWORD_ONLY", False),
        ("ephemeral", "KEYWORD_ONLY", False),
    ]
    assert params(C.list_users) == [("pattern", pos, "*")]
    assert params(C.delete_account) == []
    assert params(C) == [
        ("addr", pos, None), ("user", pos, None), ("password", kw, None), ("token", kw, None),
        ("device", kw, "python"), ("timeout", kw, 5.0), *transport_kw, ("reconnect", kw, False),
    ]
    assert ringrouter.Event is ringrouter._native.Event
    assert "Event" in ringrouter.__all__

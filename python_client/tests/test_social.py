"""The social layer through the Python client (issue 11): ephemeral messages,
copies of one's own direct messages for one's other devices, ..."""

from __future__ import annotations

import time

import pytest

import ringrouter
from conftest import assert_quiet, params, recv_messages, wait_event


def test_ephemeral_reaches_live_sessions_only(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob = connect(a_name), connect(b_name)
    alice.send(b_name, b"typing", ephemeral=True, wait=True)
    (m,) = recv_messages(bob, 1)
    assert m.ephemeral and m.seq == 0 and m.payload == b"typing"
    assert m.sender == a_name and not m.outgoing and m.to_user is None
    assert "ephemeral=True" in repr(m)
    alice.send(b_name, b"hello", wait=True)
    (m,) = recv_messages(bob, 1)
    assert (m.ephemeral, m.seq, m.payload) == (False, 1, b"hello")
    bob.close()
    time.sleep(0.2)
    # Offline: routed (OK) and dropped; never stored for the next login.
    alice.send(b_name, b"typing again", ephemeral=True, wait=True)
    alice.send(b_name, b"and again", ephemeral=True)
    alice.send(b_name, b"kept", wait=True)
    bob = connect(b_name)
    (m,) = recv_messages(bob, 1)
    assert (m.payload, m.ephemeral) == (b"kept", False)
    assert_quiet(bob)


def test_ephemeral_in_a_room(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob, stranger = connect(a_name), connect(b_name), connect(user("eve"))
    room = user("room")
    alice.create_room(room)
    bob.join_room(room)
    wait_event(alice, "joined", room, b_name)
    alice.send_room(room, b"...", ephemeral=True, wait=True)
    alice.send_room(room, b"!!!", ephemeral=True)
    ms = recv_messages(bob, 2)
    assert [(m.payload, m.room, m.ephemeral, m.seq) for m in ms] == [
        (b"...", room, True, 0),
        (b"!!!", room, True, 0),
    ]
    assert_quiet(alice)
    with pytest.raises(ringrouter.RouterError) as info:
        stranger.send_room(room, b"x", ephemeral=True, wait=True)
    assert info.value.code == "FORBIDDEN"


def test_copies_of_dms_reach_the_senders_other_devices(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    phone = connect(a_name, device="phone")
    laptop = connect(a_name, device="laptop")
    bob = connect(b_name)
    phone.send(b_name, b"hi bob", wait=True)
    (m,) = recv_messages(bob, 1)
    assert not m.outgoing and m.to_user is None
    (c,) = recv_messages(laptop, 1)
    assert c.outgoing and c.to_user == b_name and c.sender == a_name
    assert (c.payload, c.seq, c.msg_id) == (b"hi bob", 0, m.msg_id)
    assert "outgoing=True" in repr(c)
    assert_quiet(phone)
    # Ephemeral messages are not copied.
    phone.send(b_name, b"typing", ephemeral=True)
    (m,) = recv_messages(bob, 1)
    assert m.ephemeral
    assert_quiet(laptop)


def test_send_api_contract() -> None:
    """The names and signatures the issue promises (ephemeral sends, Message fields)."""
    import inspect

    C = ringrouter.Client
    pos, kw = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"
    assert params(C.send) == [
        ("to", pos, None), ("payload", pos, None), ("wait", kw, False), ("ephemeral", kw, False),
    ]
    for name in ("ephemeral", "outgoing", "to_user"):
        assert isinstance(inspect.getattr_static(ringrouter.Message, name), property) or hasattr(
            ringrouter.Message, name
        ), name


def test_room_info_and_create_with_members(connect, user) -> None:
    a_name, b_name, c_name = user("alice"), user("bob"), user("carol")
    alice, bob = connect(a_name), connect(b_name)
    connect(c_name).close()  # carol exists, and is offline
    room = user("room")
    code = alice.create_room(room, members=[b_name, c_name])
    wait_event(bob, "joined", room, b_name)
    info = alice.room_info(room)
    assert isinstance(info, ringrouter.RoomInfo)
    assert (info.name, info.owner, info.join_code) == (room, a_name, code)
    assert info.members == sorted([a_name, b_name, c_name])
    assert abs(info.created_us / 1e6 - time.time()) < 60
    assert bob.room_info(room).join_code is None
    # Python's repr of each field: it evaluates back to the same values.
    members = sorted([a_name, b_name, c_name])
    assert repr(info) == (
        f"RoomInfo(name={room!r}, owner={a_name!r}, members={members!r}, "
        f"created_us={info.created_us}, join_code={code!r})"
    )
    assert repr(bob.room_info(room)).endswith(", join_code=None)")
    # carol was offline: her "joined" waited for her.
    carol = connect(c_name)
    wait_event(carol, "joined", room, c_name)
    with pytest.raises(ringrouter.RouterError) as info:
        connect(user("eve")).room_info(room)
    assert info.value.code == "FORBIDDEN"
    with pytest.raises(ringrouter.RouterError) as info:
        alice.create_room(user("room"), members=["nobody-" + user("x")])
    assert info.value.code == "NOT_FOUND"


def test_room_api_contract() -> None:
    C = ringrouter.Client
    pos, kw = "POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY"
    # (The password positional too: issue 5 names create_room(name, password=None).)
    assert params(C.create_room) == [("name", pos, None), ("password", pos, None), ("members", kw, ())]
    assert params(C.room_info) == [("room", pos, None)]
    assert "RoomInfo" in ringrouter.__all__


def next_receipt(c: ringrouter.Client, timeout: float = 5.0) -> ringrouter.Receipt:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no receipt"
        r = c.recv(timeout=left)
        if isinstance(r, ringrouter.Receipt):
            return r


def test_read_receipts(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    phone, laptop = connect(a_name, device="phone"), connect(a_name, device="laptop")
    bob = connect(b_name)
    bob.send(a_name, b"read me", wait=True)
    (m,) = recv_messages(phone, 1)
    phone.mark_read(user=b_name, msg_id=m.msg_id)
    r = next_receipt(bob)
    assert (r.user, r.room, r.to_user, r.msg_id) == (a_name, None, b_name, m.msg_id)
    assert next_receipt(laptop) == r
    assert "Receipt(" in repr(r)
    room = user("room")
    bob.create_room(room, members=[a_name])
    bob.send_room(room, b"hi", wait=True)
    (m,) = recv_messages(laptop, 1)
    laptop.mark_read(room=room, msg_id=m.msg_id)
    r = next_receipt(bob)
    assert (r.user, r.room, r.to_user, r.msg_id) == (a_name, room, None, m.msg_id)
    assert next_receipt(phone) == r
    with pytest.raises(ValueError):
        phone.mark_read(user=b_name, room=room, msg_id=1)
    with pytest.raises(ringrouter.RouterError) as info:
        connect(user("eve")).mark_read(room=room, msg_id=m.msg_id)
    assert info.value.code == "FORBIDDEN"


def test_receipt_api_contract() -> None:
    kw = "KEYWORD_ONLY"
    assert params(ringrouter.Client.mark_read) == [
        ("user", kw, None), ("room", kw, None), ("msg_id", kw, None),
    ]
    assert "Receipt" in ringrouter.__all__

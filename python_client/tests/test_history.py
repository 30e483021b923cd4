"""History and the conversation list through the Python client (open auth)."""

from __future__ import annotations

from typing import List

import pytest

import ringrouter


def payloads(ms: List[ringrouter.Message]) -> List[bytes]:
    return [m.payload for m in ms]


def test_history_of_a_direct_conversation_pages_back_oldest_first(connect, user) -> None:
    a_name, b_name = user("ha"), user("hb")
    a, b = connect(a_name), connect(b_name)
    for i in range(12):
        a.send(b_name, b"a%d" % i)
    a.send(b_name, b"last from a", wait=True)
    b.send(a_name, b"from b", wait=True)
    want = [b"a%d" % i for i in range(12)] + [b"last from a", b"from b"]
    page = b.history(user=a_name, limit=5)
    assert payloads(page) == want[-5:]
    assert all(isinstance(m, ringrouter.Message) and m.seq == 0 for m in page)
    assert page[-1].sender == b_name and page[0].sender == a_name
    # Back page by page (before= a Message or its msg_id) until a page is empty.
    got: List[ringrouter.Message] = []
    before = None
    while True:
        p = a.history(user=b_name, before=before, limit=4)
        if not p:
            break
        got = p + got
        before = p[0] if len(got) % 8 else p[0].msg_id
    assert payloads(got) == want
    # Default limit 50: everything here.
    assert payloads(a.history(user=b_name)) == want


def test_history_arguments_and_limits(connect, user) -> None:
    a = connect(user("hx"))
    with pytest.raises(ValueError):
        a.history()
    with pytest.raises(ValueError):
        a.history(user="x", room="y")
    with pytest.raises(ringrouter.RouterError) as info:
        a.history(user=user("nobody"), limit=501)
    assert info.value.status is ringrouter.Status.BAD_REQUEST
    with pytest.raises(ringrouter.RouterError) as info:
        a.history(user=user("nobody"), before=12345)
    assert info.value.status is ringrouter.Status.NOT_FOUND
    with pytest.raises(TypeError):
        a.history(user="x", before=None, limit=5, extra=1)  # type: ignore[call-arg]


def test_room_history_is_for_members(connect, user) -> None:
    a_name, b_name, c_name = user("hra"), user("hrb"), user("hrc")
    a, b, c = connect(a_name), connect(b_name), connect(c_name)
    room = user("hroom")
    a.create_room(room)
    b.join_room(room)
    a.send_room(room, b"one", wait=True)
    b.send_room(room, b"two", wait=True)
    h = b.history(room=room)
    assert payloads(h) == [b"one", b"two"]
    assert [m.room for m in h] == [room, room]
    with pytest.raises(ringrouter.RouterError) as info:
        c.history(room=room)
    assert info.value.status is ringrouter.Status.FORBIDDEN
    b.leave_room(room)
    with pytest.raises(ringrouter.RouterError) as info:
        b.history(room=room)
    assert info.value.code == "FORBIDDEN"


def test_conversations_newest_first_with_unread(connect, user) -> None:
    a_name, b_name, c_name = user("hca"), user("hcb"), user("hcc")
    a, b, c = connect(a_name), connect(b_name), connect(c_name)
    a.send(b_name, b"hi b", wait=True)
    b.send(a_name, b"hi a", wait=True)
    b.send(a_name, b"still there?", wait=True)
    c.send(a_name, b"from c", wait=True)
    convs = a.conversations()
    assert [(x.user, x.room, x.unread, x.last.payload) for x in convs] == [
        (c_name, None, 1, b"from c"),
        (b_name, None, 2, b"still there?"),
    ]
    assert isinstance(convs[0], ringrouter.Conversation)
    assert "Conversation(" in repr(convs[0])
    older = a.conversations(10, before_us=convs[0].last.timestamp_us)
    assert [x.user for x in older] == [b_name]
    a.send(b_name, b"yes", wait=True)
    top = a.conversations(1)
    assert (top[0].user, top[0].unread) == (b_name, 0)


def test_unread_counts_after_the_read_mark(connect, user) -> None:
    a_name, b_name = user("hma"), user("hmb")
    a, b = connect(a_name), connect(b_name)
    for i in range(4):
        b.send(a_name, b"m%d" % i, wait=True)
    assert [x.unread for x in a.conversations()] == [4]
    h = a.history(user=b_name)
    a.mark_read(user=b_name, msg_id=h[1].msg_id)
    assert [x.unread for x in a.conversations()] == [2]
    # A mark of a message not kept changes nothing.
    a.mark_read(user=b_name, msg_id=987654321)
    assert [x.unread for x in a.conversations()] == [2]


def test_history_is_on_by_default(own_router, user) -> None:
    r = own_router()
    a_name, b_name = user("hda"), user("hdb")
    with ringrouter.Client(r.addr, a_name) as a, ringrouter.Client(r.addr, b_name):
        a.send(b_name, b"kept", wait=True)
        assert payloads(a.history(user=b_name)) == [b"kept"]


def test_history_off_and_retention(own_router, user) -> None:
    r = own_router("--history-per-conversation", "3")
    a_name, b_name = user("hka"), user("hkb")
    with ringrouter.Client(r.addr, a_name) as a, ringrouter.Client(r.addr, b_name):
        for i in range(10):
            a.send(b_name, b"%d" % i, wait=True)
        assert payloads(a.history(user=b_name)) == [b"7", b"8", b"9"]
    r = own_router("--history-per-conversation", "0")
    with ringrouter.Client(r.addr, a_name) as a, ringrouter.Client(r.addr, b_name):
        a.send(b_name, b"x", wait=True)
        assert a.history(user=b_name) == []
        assert a.conversations() == []

"""Offline delivery and redelivery through the Python client, against a real router."""

from __future__ import annotations

import time

import ringrouter
from conftest import Router, recv_messages


def test_messages_to_an_offline_user_arrive_at_next_login_in_order(
    router: Router, connect, user
) -> None:
    a_name, b_name = user("alice"), user("bob")
    # Bob logs in once, so the router knows him, and goes away.
    with ringrouter.Client(router.addr, b_name):
        pass
    alice = connect(a_name)
    n = 100
    for i in range(n):
        # OK means delivered or stored for later.
        alice.send(b_name, b"offline %d" % i, wait=(i % 10 == 9))
    alice.send(b_name, b"last", wait=True)
    bob = connect(b_name)
    got = recv_messages(bob, n + 1, timeout=30)
    assert [m.payload for m in got] == [b"offline %d" % i for i in range(n)] + [b"last"]
    assert all(m.sender == a_name and m.room is None for m in got)
    # Delivered (and acked): not again at the login after.
    bob.close()
    with ringrouter.Client(router.addr, b_name) as again:
        assert again.recv(timeout=0.5) is None


def test_room_messages_wait_for_an_offline_member(router: Router, connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice = connect(a_name)
    room = user("room")
    alice.create_room(room)
    with ringrouter.Client(router.addr, b_name) as bob:
        bob.join_room(room)
    for i in range(10):
        alice.send_room(room, b"r%d" % i, wait=True)
    bob = connect(b_name)
    got = recv_messages(bob, 10, timeout=30)
    assert [m.payload for m in got] == [b"r%d" % i for i in range(10)]
    assert all(m.room == room for m in got)


def test_unacknowledged_messages_are_delivered_again(router: Router, connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice = connect(a_name)
    bob = ringrouter.Client(router.addr, b_name)
    n = 20
    for i in range(n):
        alice.send(b_name, b"%d" % i, wait=True)
    # Bob takes 5 (acked when he closes); the other 15 reach his client but are
    # never handed to him, so never acked.
    first = recv_messages(bob, 5)
    assert [m.payload for m in first] == [b"%d" % i for i in range(5)]
    time.sleep(0.3)
    bob.close()
    again = connect(b_name)
    rest = recv_messages(again, n - 5, timeout=30)
    # Redelivered in order; a client dedupes by msg_id, and nothing acked comes back.
    assert [m.payload for m in rest] == [b"%d" % i for i in range(5, n)]
    assert not {m.msg_id for m in first} & {m.msg_id for m in rest}

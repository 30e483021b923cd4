"""Contacts and presence through the Python client (issue 11): requests live and at
the next login, accept / decline / remove, blocks, ``--dm-policy contacts``, presence
to accepted contacts only."""

from __future__ import annotations

import time
from typing import List, Type, TypeVar

import pytest

import ringrouter
from conftest import params, recv_messages

E = TypeVar("E")


def next_of(c: ringrouter.Client, cls: Type[E], timeout: float = 5.0) -> E:
    """The next object of type ``cls`` that ``c.recv()`` returns (others dropped)."""
    seen: List[object] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {cls.__name__}; got {seen!r}"
        ev = c.recv(timeout=left)
        if isinstance(ev, cls):
            return ev
        if ev is not None:
            seen.append(ev)


def none_of(c: ringrouter.Client, cls: type, wait: float = 0.5) -> None:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ev = c.recv(timeout=left)
        assert not isinstance(ev, cls), f"unexpected {ev!r}"


def test_request_accept_decline_remove(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob = connect(a_name), connect(b_name)
    alice.contact_request(b_name)
    ev = next_of(bob, ringrouter.ContactEvent)
    assert (ev.kind, ev.user, ev.version, ev.state) == ("request", a_name, 1, "incoming")
    assert "ContactEvent(kind='request'" in repr(ev)
    c = bob.contacts()
    assert isinstance(c, ringrouter.Contacts)
    assert (c.version, c.incoming, c.accepted, c.outgoing, c.blocked) == (1, [a_name], [], [], [])
    assert alice.contacts().outgoing == [b_name]
    bob.contact_accept(a_name)
    ev = next_of(alice, ringrouter.ContactEvent)
    assert (ev.kind, ev.user, ev.version) == ("accepted", b_name, 2)
    assert alice.contacts().accepted == [b_name] and bob.contacts().accepted == [a_name]
    with pytest.raises(ringrouter.RouterError) as e:
        bob.contact_decline(a_name)
    assert e.value.status == ringrouter.Status.NOT_FOUND
    alice.contact_remove(b_name)
    assert next_of(bob, ringrouter.ContactEvent).kind == "removed"
    bob.contact_request(a_name)
    assert next_of(alice, ringrouter.ContactEvent).kind == "request"
    alice.contact_decline(b_name)
    assert next_of(bob, ringrouter.ContactEvent).kind == "declined"
    assert bob.contacts().outgoing == []


def test_a_request_to_an_offline_user_waits_for_its_login(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    connect(b_name).close()
    time.sleep(0.2)
    alice = connect(a_name)
    alice.contact_request(b_name)
    bob = connect(b_name)
    ev = next_of(bob, ringrouter.ContactEvent)
    assert (ev.kind, ev.user) == ("request", a_name)


def test_block_refuses_messages_and_requests(connect, user) -> None:
    a_name, b_name = user("alice"), user("bob")
    alice, bob = connect(a_name), connect(b_name)
    bob.block(a_name)
    time.sleep(0.2)
    for call in (lambda: alice.send(b_name, b"hi", wait=True), lambda: alice.contact_request(b_name)):
        with pytest.raises(ringrouter.RouterError) as e:
            call()
        assert e.value.status == ringrouter.Status.FORBIDDEN
    assert bob.contacts().blocked == [a_name]
    none_of(alice, ringrouter.ContactEvent)
    bob.unblock(a_name)
    time.sleep(0.2)
    alice.send(b_name, b"after", wait=True)
    (m,) = recv_messages(bob, 1)
    assert m.payload == b"after"


def test_dm_policy_contacts(own_router, user) -> None:
    r = own_router("--dm-policy", "contacts")
    a_name, b_name = user("alice"), user("bob")
    with ringrouter.Client(r.addr, a_name) as alice, ringrouter.Client(r.addr, b_name) as bob:
        with pytest.raises(ringrouter.RouterError) as e:
            alice.send(b_name, b"stranger", wait=True)
        assert e.value.status == ringrouter.Status.FORBIDDEN
        alice.contact_request(b_name)
        bob.contact_accept(a_name)
        alice.send(b_name, b"friend", wait=True)
        (m,) = recv_messages(bob, 1)
        assert m.payload == b"friend"


def test_presence_goes_to_contacts_only(connect, user) -> None:
    a_name, b_name, c_name = user("alice"), user("bob"), user("carol")
    alice, bob, carol = connect(a_name), connect(b_name), connect(c_name)
    alice.contact_request(b_name)
    bob.contact_accept(a_name)
    p = next_of(bob, ringrouter.Presence)
    assert (p.user, p.status, p.text, p.last_seen_us) == (a_name, "online", "", 0)
    time.sleep(1.1)
    alice.set_presence("away", "lunch")
    p = next_of(bob, ringrouter.Presence)
    assert (p.status, p.text) == ("away", "lunch")
    assert "Presence(user=" in repr(p)
    q = bob.presence(a_name)
    assert q == p
    none_of(carol, ringrouter.Presence)
    with pytest.raises(ringrouter.RouterError) as e:
        carol.presence(a_name)
    assert e.value.status == ringrouter.Status.FORBIDDEN
    with pytest.raises(ValueError):
        alice.set_presence("sleeping")
    with pytest.raises(ringrouter.RouterError) as e:
        alice.set_presence("online", "x" * 10_000)
    assert e.value.status == ringrouter.Status.BAD_REQUEST
    alice.close()
    p = next_of(bob, ringrouter.Presence)
    assert p.status == "offline" and p.last_seen_us > 0


def test_api_shape() -> None:
    c = ringrouter.Client
    assert params(c.set_presence) == [
        ("status", "POSITIONAL_OR_KEYWORD", "online"),
        ("text", "POSITIONAL_OR_KEYWORD", ""),
    ]
    for name in ("contact_request", "contact_accept", "contact_decline", "contact_remove", "block", "unblock", "presence"):
        assert params(getattr(c, name)) == [("user", "POSITIONAL_OR_KEYWORD", None)], name
    assert params(c.contacts) == []

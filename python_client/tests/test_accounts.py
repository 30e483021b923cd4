"""Accounts (--auth accounts) through the Python client, against a real router."""

from __future__ import annotations

import time

import pytest

import ringrouter
from conftest import Router, recv_messages, wait_event

PW = "correct horse battery staple"


def test_register_then_login(accounts_router: Router, user) -> None:
    name = user("reg")
    assert ringrouter.Client.register(accounts_router.addr, name, PW) is None
    with ringrouter.Client(accounts_router.addr, name, password=PW) as c:
        assert c.user == name
        assert not c.closed


def test_register_twice_is_conflict(accounts_router: Router, user) -> None:
    name = user("dup")
    ringrouter.Client.register(accounts_router.addr, name, PW)
    with pytest.raises(ringrouter.RouterError) as info:
        ringrouter.Client.register(accounts_router.addr, name, "another password")
    assert info.value.code == "CONFLICT"
    assert info.value.status is ringrouter.Status.CONFLICT
    assert not isinstance(info.value, ringrouter.AuthError)
    # The first password still holds.
    with ringrouter.Client(accounts_router.addr, name, password=PW):
        pass


def test_wrong_or_missing_password_is_auth_error(accounts_router: Router, user) -> None:
    name = user("pw")
    ringrouter.Client.register(accounts_router.addr, name, PW)
    for password in ("wrong", "", None):
        with pytest.raises(ringrouter.AuthError) as info:
            ringrouter.Client(accounts_router.addr, name, password=password)
        assert info.value.code == "UNAUTHORIZED", info.value
        assert info.value.status is ringrouter.Status.UNAUTHORIZED, info.value
    # An unknown user is refused the same way.
    with pytest.raises(ringrouter.AuthError) as info:
        ringrouter.Client(accounts_router.addr, user("nobody"), password=PW)
    assert info.value.status is ringrouter.Status.UNAUTHORIZED, info.value


def test_list_users_with_a_glob(own_router, user) -> None:
    r = own_router("--auth", "accounts")
    p = user("ls")
    names = [f"{p}-a1", f"{p}-a2", f"{p}-b1", f"{p}-bb"]
    for n in names:
        ringrouter.Client.register(r.addr, n, PW)
    with ringrouter.Client(r.addr, names[0], password=PW) as c:
        assert c.list_users() == sorted(names)
        assert c.list_users("*") == sorted(names)
        assert c.list_users(f"{p}-a*") == [f"{p}-a1", f"{p}-a2"]
        assert c.list_users(f"{p}-?1") == [f"{p}-a1", f"{p}-b1"]
        assert c.list_users(pattern=f"{p}-b?") == [f"{p}-b1", f"{p}-bb"]
        assert c.list_users("nothing-matches-*") == []


def test_delete_account(accounts_router: Router, accounts_connect, user) -> None:
    name, other_name = user("gone"), user("stays")
    addr = accounts_router.addr
    ringrouter.Client.register(addr, name, PW)
    ringrouter.Client.register(addr, other_name, PW)
    phone = accounts_connect(name, PW, device="phone")
    laptop = accounts_connect(name, PW, device="laptop")
    other = accounts_connect(other_name, PW)
    assert name in other.list_users(f"{name}*")
    phone.delete_account()
    # Every session of the user ends: the router's reason (UNAUTHORIZED, "account
    # deleted", an AuthError), then the close. Nothing else may come.
    for c in (phone, laptop):
        errors = []
        deadline = time.monotonic() + 5
        with pytest.raises(ringrouter.ConnectionClosed):
            while time.monotonic() < deadline:
                try:
                    got = c.recv(timeout=0.2)
                except ringrouter.ConnectionClosed:
                    raise
                except ringrouter.RouterError as e:
                    errors.append(e)
                    continue
                assert got is None, f"unexpected {got!r} after delete_account"
        assert [(type(e), e.status, e.reason) for e in errors] == [
            (ringrouter.AuthError, ringrouter.Status.UNAUTHORIZED, "account deleted")
        ], errors
        assert c.closed
    assert other.list_users(f"{name}*") == []
    with pytest.raises(ringrouter.AuthError) as info:
        ringrouter.Client(addr, name, password=PW)
    assert info.value.status is ringrouter.Status.UNAUTHORIZED, info.value
    # The name is free again.
    ringrouter.Client.register(addr, name, "a new password")
    with ringrouter.Client(addr, name, password="a new password") as again:
        assert again.user == name


def test_deleting_an_account_deletes_its_rooms(accounts_router: Router, accounts_connect, user) -> None:
    owner_name, member_name = user("owner"), user("member")
    addr = accounts_router.addr
    ringrouter.Client.register(addr, owner_name, PW)
    ringrouter.Client.register(addr, member_name, PW)
    owner = accounts_connect(owner_name, PW)
    member = accounts_connect(member_name, PW)
    room = user("room")
    owner.create_room(room)
    member.join_room(room)
    owner.send_room(room, b"last words", wait=True)
    assert recv_messages(member, 1)[0].payload == b"last words"
    owner.delete_account()
    wait_event(member, "deleted", room, owner_name)
    assert room not in member.rooms()


def test_rooms_work_for_accounts_too(accounts_router: Router, accounts_connect, user) -> None:
    a_name, b_name = user("a"), user("b")
    for n in (a_name, b_name):
        ringrouter.Client.register(accounts_router.addr, n, PW)
    a, b = accounts_connect(a_name, PW), accounts_connect(b_name, PW)
    room = user("room")
    code = a.create_room(room, password="door")
    assert b.join_room(code, password="door") == room
    a.send_room(room, b"hi", wait=True)
    (m,) = recv_messages(b, 1)
    assert (m.sender, m.room, m.payload) == (a_name, room, b"hi")

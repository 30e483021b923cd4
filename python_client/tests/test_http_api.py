"""The router's HTTP port against its OpenAPI document (docs/openapi.yaml), checked by
schemathesis, and the behaviour of each endpoint: publish reaches a logged-in client and
an offline one at its next login, tokens log in, disconnect closes sessions, the key is
required, user and room info.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

import ringrouter

from conftest import JWT_SECRET, REPO, Router, recv_messages

DOC = REPO / "docs" / "openapi.yaml"
KEY = "python-http-api-test-key"
T = 5.0


@pytest.fixture(scope="module")
def api_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("api") / "key"
    p.write_text(KEY + "\n")
    return p


@pytest.fixture(scope="module")
def api_router(api_key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """A router with the API on, in jwt mode (so that tokens can be issued)."""
    secret = tmp_path_factory.mktemp("jwt") / "secret"
    secret.write_bytes(JWT_SECRET + b"\n")
    r = Router(
        [
            "--shards", "2",
            "--auth", "jwt",
            "--jwt-secret-file", str(secret),
            "--api-key-file", str(api_key_file),
        ]
    )
    assert r.http is not None, "no HTTP line"
    yield r
    r.terminate()


def call(
    r: Router,
    method: str,
    path: str,
    body: Optional[Dict[str, Any]] = None,
    key: Optional[str] = KEY,
) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP request to the router's HTTP port: (status, headers, body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{r.http}{path}", data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if key is not None:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=T) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def call_json(r: Router, method: str, path: str, body: Optional[Dict[str, Any]] = None,
              key: Optional[str] = KEY) -> Tuple[int, Any]:
    code, _, raw = call(r, method, path, body, key)
    return code, json.loads(raw)


def token_for(r: Router, user: str) -> str:
    code, v = call_json(r, "POST", "/api/v1/tokens", {"user": user, "ttl_s": 60})
    assert code == 200, v
    return v["token"]


def client(r: Router, user: str) -> ringrouter.Client:
    return ringrouter.Client(r.addr, "", token=token_for(r, user))


# ------------------------------------------------------------- the document

@pytest.fixture(scope="module")
def api_schema(api_router: Router) -> Any:
    schema = schemathesis.openapi.from_path(str(DOC))
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
    st_checks.positive_data_acceptance,
]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_server_matches_openapi_document(case: Any, api_router: Router) -> None:
    """Every answer (to generated valid and invalid requests) is one the document
    describes: status code, content type, body schema; valid requests are not refused
    as bad. (Whether invalid data is refused is tested explicitly below: the document's
    name pattern is a subset of the router's name rule.)"""
    headers = {"authorization": f"Bearer {KEY}"} if case.operation.path.startswith("/api/") else {}
    case.call_and_validate(base_url=f"http://{api_router.http}", headers=headers, checks=CHECKS)


def test_document_lists_every_endpoint() -> None:
    text = DOC.read_text()
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/publish", "/api/v1/tokens",
                 "/api/v1/users/{user}/sessions", "/api/v1/users/{user}", "/api/v1/rooms/{room}"]:
        assert f"  {path}:" in text, path


# ------------------------------------------------------------- behaviour

def test_health_ready_metrics(api_router: Router) -> None:
    assert call(api_router, "GET", "/healthz", key=None)[0] == 200
    assert call(api_router, "GET", "/readyz", key=None)[0] == 200
    code, headers, body = call(api_router, "GET", "/metrics", key=None)
    assert code == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert b"ringrouter_messages_in_total " in body


def test_api_needs_the_key(api_router: Router) -> None:
    for key in [None, "wrong", KEY + "x"]:
        code, v = call_json(api_router, "GET", "/api/v1/users/nobody", key=key)
        assert (code, v["code"]) == (401, "UNAUTHORIZED"), v
        code, v = call_json(api_router, "POST", "/api/v1/publish", {"to_user": "x", "payload": "y"}, key=key)
        assert code == 401, v


def test_api_is_off_without_a_key_file(router: Router) -> None:
    code, v = call_json(router, "GET", "/api/v1/users/nobody")
    assert (code, v["code"]) == (404, "NOT_FOUND"), v


def test_publish_reaches_a_logged_in_client(api_router: Router, user) -> None:
    name = user("on")
    with client(api_router, name) as c:
        code, v = call_json(api_router, "POST", "/api/v1/publish", {"to_user": name, "payload": "hi there"})
        assert code == 200, v
        (m,) = recv_messages(c, 1)
        assert (m.sender, m.payload, m.msg_id) == ("system", b"hi there", v["msg_id"])
        code, v = call_json(
            api_router, "POST", "/api/v1/publish",
            {"to_user": name, "payload_b64": "AP8=", "from_user": "billing"},
        )
        assert code == 200, v
        (m,) = recv_messages(c, 1)
        assert (m.sender, m.payload) == ("billing", b"\x00\xff")


def test_publish_reaches_an_offline_user_at_next_login(api_router: Router, user) -> None:
    name = user("off")
    client(api_router, name).close()  # the user exists from its first login
    time.sleep(0.2)
    for i in range(3):
        code, v = call_json(api_router, "POST", "/api/v1/publish", {"to_user": name, "payload": f"m{i}"})
        assert code == 200, v
    code, v = call_json(api_router, "GET", f"/api/v1/users/{name}")
    assert (code, v) == (200, {"user": name, "sessions": 0, "queued": 3}), v
    with client(api_router, name) as c:
        got = [m.payload for m in recv_messages(c, 3)]
    assert got == [b"m0", b"m1", b"m2"]


def test_publish_to_unknown_user_room_and_bad_input(api_router: Router, user) -> None:
    pub = lambda b: call_json(api_router, "POST", "/api/v1/publish", b)  # noqa: E731
    assert pub({"to_user": user("ghost"), "payload": "x"})[1]["code"] == "NOT_FOUND"
    assert pub({"to_room": user("noroom"), "payload": "x"})[1]["code"] == "NOT_FOUND"
    for bad in [
        {"payload": "x"},
        {"to_user": "a", "to_room": "b", "payload": "x"},
        {"to_user": "a"},
        {"to_user": "bad\u202ename", "payload": "x"},
        {"to_user": "a", "payload": "x", "unknown": True},
    ]:
        code, v = pub(bad)
        assert (code, v["code"]) == (400, "BAD_REQUEST"), (bad, v)


def test_publish_to_a_room(api_router: Router, user) -> None:
    room, a_name, b_name = user("room"), user("a"), user("b")
    with client(api_router, a_name) as a, client(api_router, b_name) as b:
        a.create_room(room)
        b.join_room(room)
        code, v = call_json(api_router, "POST", "/api/v1/publish", {"to_room": room, "payload": "to all"})
        assert code == 200, v
        for c in (a, b):
            (m,) = recv_messages(c, 1)
            assert (m.room, m.payload) == (room, b"to all")
        code, info = call_json(api_router, "GET", f"/api/v1/rooms/{room}")
        assert code == 200, info
        assert info["owner"] == a_name
        assert sorted(info["members"]) == sorted([a_name, b_name])


def test_tokens_log_in(api_router: Router, user) -> None:
    name = user("tok")
    with client(api_router, name) as c:
        assert c.user == name
    code, v = call_json(api_router, "POST", "/api/v1/tokens", {"user": name, "ttl_s": 0})
    assert (code, v["code"]) == (400, "BAD_REQUEST")


def test_tokens_need_jwt_mode(own_router, api_key_file: Path) -> None:
    r = own_router("--api-key-file", str(api_key_file))
    code, v = call_json(r, "POST", "/api/v1/tokens", {"user": "x", "ttl_s": 60})
    assert (code, v["code"]) == (400, "BAD_REQUEST"), v


def test_disconnect_closes_the_sessions(api_router: Router, user) -> None:
    name = user("kick")
    c1, c2 = client(api_router, name), client(api_router, name)
    code, v = call_json(api_router, "DELETE", f"/api/v1/users/{name}/sessions")
    assert (code, v) == (200, {"user": name, "disconnected": 2}), v
    for c in (c1, c2):
        with pytest.raises(ringrouter.RouterError) as info:
            for _ in range(10):
                c.recv(timeout=T)
        assert isinstance(info.value, ringrouter.ConnectionClosed) or info.value.code == "UNAUTHORIZED"
        with pytest.raises(ringrouter.ConnectionClosed):
            for _ in range(10):
                c.recv(timeout=T)
    code, v = call_json(api_router, "GET", f"/api/v1/users/{name}")
    assert (code, v["sessions"]) == (200, 0), v

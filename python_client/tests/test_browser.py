"""The browser page (web/, served at / on the HTTP port) in a real browser.

Headless Debian Chromium (``/usr/bin/chromium``) driven by Playwright for Python; the
page talks to the router over ``ws://HOST/ws``, subprotocol ``ringrouter.v1.json``.
``scripts/test-all.sh`` installs both (``apt-get install chromium`` as root,
``pip install playwright`` into the venv; never ``playwright install``). Without them
the tests are skipped, saying why; under CI (``CI=true``) they fail instead.

The tests use the session's router (conftest: its HTTP port on a free port, read from
its ``ringrouter http on ADDR`` line), or routers of their own. ``RINGROUTER_WEB_URL=http://HOST:PORT``
runs the page-only tests against a server that is already up instead (the tests that
need the TCP port or a restart are then skipped).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from typing import Callable, Iterator, List, Optional

import pytest

import ringrouter
from conftest import JWT_SECRET, Router, make_jwt, recv_messages

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: two cores are shared by the router, Chromium and the other tests.
TIMEOUT_MS = 15_000


def _unavailable() -> Optional[str]:
    if not os.path.isfile(CHROMIUM):
        return f"{CHROMIUM} is missing (as root: apt-get install -y chromium; scripts/test-all.sh does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing (pip install playwright; scripts/test-all.sh does it)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    print(f"\nbrowser tests skipped: {reason}")
    pytest.skip(reason)


def http_url(r: Router) -> str:
    assert r.http_addr, f"the router has no HTTP port; stderr: {''.join(r.stderr_lines)}"
    return f"http://{r.http_addr}"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    reason = _unavailable()
    if reason:
        _skip_or_fail(reason)
    from playwright.sync_api import expect as pw_expect
    from playwright.sync_api import sync_playwright

    pw_expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        # Playwright gives each launch a fresh temporary profile (user-data-dir).
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def web_router(request) -> Optional[Router]:
    """The router under test: the session's (None when RINGROUTER_WEB_URL names a
    server already up)."""
    if os.environ.get("RINGROUTER_WEB_URL"):
        return None
    return request.getfixturevalue("router")


@pytest.fixture
def base_url(web_router: Optional[Router]) -> str:
    if web_router is None:
        return os.environ["RINGROUTER_WEB_URL"].rstrip("/")
    return http_url(web_router)


@pytest.fixture
def pages(browser) -> Iterator[Callable[[str], object]]:
    """Opens the page at a URL in a new browser context (its own storage); closed at the end."""
    contexts: List[object] = []

    def open_page(url: str, **context_options: object):
        ctx = browser.new_context(**context_options)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: List[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.js_errors = errors  # type: ignore[attr-defined]
        page.goto(url + "/")
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ page helpers


def expect(x):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(x)


def login(page, user: str, device: str = "web") -> None:
    page.fill("#login-user", user)
    page.fill("#login-device", device)
    page.click("#login-submit")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "online", timeout=TIMEOUT_MS)
    expect(page.locator("#me")).to_have_text(f"{user} ({device})")
    expect(page.locator("#chat-view")).to_be_visible()


def open_dm(page, peer: str) -> None:
    page.fill("#dm-user", peer)
    page.click("#dm-open")
    expect(page.locator("#conv-title")).to_have_attribute("data-conv", f"dm:{peer}")


def open_conv(page, key: str) -> None:
    page.click(f'[data-testid="conv"][data-conv="{key}"]')
    expect(page.locator("#conv-title")).to_have_attribute("data-conv", key)


def send(page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")
    mine = page.locator('#messages [data-testid="message"].mine').filter(has_text=text)
    expect(mine.last).to_have_attribute("data-state", "sent")


def messages(page, sender: Optional[str] = None):
    sel = '#messages [data-testid="message"]'
    if sender is not None:
        sel += f'[data-from="{sender}"]'
    return page.locator(sel)


def expect_message(page, sender: str, text: str) -> None:
    expect(messages(page, sender).filter(has_text=text)).to_have_count(1)


def no_js_errors(*pages) -> None:
    for p in pages:
        assert p.js_errors == [], p.js_errors


# ------------------------------------------------------------------------ tests


def test_page_is_served(pages, base_url) -> None:
    page = pages(base_url)
    expect(page).to_have_title("ringrouter chat")
    expect(page.locator("#login-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "closed")
    # The files come with their types.
    for path, ctype in [("/app.js", "text/javascript"), ("/style.css", "text/css"), ("/", "text/html")]:
        r = page.request.get(base_url + path)
        assert r.status == 200, path
        assert r.headers["content-type"].startswith(ctype), (path, r.headers)
    no_js_errors(page)


def test_two_pages_exchange_direct_messages(pages, base_url) -> None:
    a_name, b_name = uniq("alice"), uniq("bob")
    alice, bob = pages(base_url), pages(base_url)
    login(alice, a_name)
    login(bob, b_name)

    open_dm(alice, b_name)
    # Markup in a message is text, never HTML.
    first = "hello bob <b>not bold</b> ✓ ünïcödé"
    send(alice, first)
    conv = bob.locator(f'[data-testid="conv"][data-conv="dm:{a_name}"]')
    expect(conv).to_have_attribute("data-unread", "1")
    open_conv(bob, f"dm:{a_name}")
    expect_message(bob, a_name, first)
    assert bob.locator("#messages b").count() == 0
    expect(conv).to_have_attribute("data-unread", "0")

    # The reply lands in alice's open conversation, in order with her own.
    send(bob, "hi alice")
    send(bob, "second line\nthird line")
    expect_message(alice, b_name, "hi alice")
    expect(messages(alice)).to_have_count(3)
    texts = messages(alice).locator('[data-testid="message-text"]').all_inner_texts()
    assert texts == [first, "hi alice", "second line\nthird line"], texts
    no_js_errors(alice, bob)


def test_acked_messages_are_not_delivered_again(pages, base_url) -> None:
    """The page acks what it is delivered: after it logs out and back in, the router
    has nothing to deliver again (unacked messages would come back at the next login)."""
    a_name, b_name = uniq("alice"), uniq("bob")
    alice, bob = pages(base_url), pages(base_url)
    login(alice, a_name)
    login(bob, b_name)
    open_dm(alice, b_name)
    for i in range(5):
        send(alice, f"message {i}")
    expect(bob.locator(f'[data-testid="conv"][data-conv="dm:{a_name}"]')).to_have_attribute(
        "data-unread", "5"
    )
    time.sleep(0.5)  # the page acks within 100 ms
    bob.close()
    bob = pages(base_url)
    login(bob, b_name)
    send_marker = "after the reconnect"
    send(alice, send_marker)
    open_conv(bob, f"dm:{a_name}")
    expect_message(bob, a_name, send_marker)
    # Only the new message: the five were acked and not delivered again.
    expect(messages(bob)).to_have_count(1)
    no_js_errors(alice, bob)


def test_room_created_in_one_page_is_joined_by_code_in_the_other(pages, base_url) -> None:
    a_name, b_name = uniq("alice"), uniq("bob")
    room = uniq("room")
    alice, bob = pages(base_url), pages(base_url)
    login(alice, a_name)
    login(bob, b_name)

    alice.fill("#room-create-name", room)
    alice.click("#room-create-btn")
    expect(alice.locator("#conv-title")).to_have_attribute("data-conv", f"room:{room}")
    code = alice.locator('[data-testid="join-code"]').inner_text().strip()
    assert code.startswith("#") and code != room, code

    bob.fill("#room-join-name", code)
    bob.click("#room-join-btn")
    # Joined by code, the conversation is named after the room.
    expect(bob.locator("#conv-title")).to_have_attribute("data-conv", f"room:{room}")
    # alice sees bob join.
    expect(
        alice.locator(f'#messages [data-testid="room-event"][data-kind="joined"][data-user="{b_name}"]')
    ).to_have_count(1)

    send(bob, "hello room")
    expect_message(alice, b_name, "hello room")
    send(alice, "welcome bob")
    expect_message(bob, a_name, "welcome bob")
    # The sender's own page shows its message once (no echo from the router).
    expect(messages(bob, b_name)).to_have_count(1)

    # Leaving: alice sees the event, bob cannot write to the room any more.
    bob.click("#leave-room-btn")
    expect(
        alice.locator(f'#messages [data-testid="room-event"][data-kind="left"][data-user="{b_name}"]')
    ).to_have_count(1)
    expect(bob.locator("#message-input")).to_be_disabled()
    no_js_errors(alice, bob)


def test_room_errors_are_shown(pages, base_url) -> None:
    alice = pages(base_url)
    login(alice, uniq("alice"))
    alice.fill("#room-join-name", uniq("no-such-room"))
    alice.click("#room-join-btn")
    expect(alice.locator("#notice")).to_contain_text("NOT_FOUND")
    # A direct message to nobody: refused, and the page says so on the message.
    open_dm(alice, uniq("nobody"))
    alice.fill("#message-input", "anyone there?")
    alice.press("#message-input", "Enter")
    msg = messages(alice).filter(has_text="anyone there?")
    expect(msg).to_have_attribute("data-state", "failed")
    expect(msg).to_contain_text("NOT_FOUND")
    no_js_errors(alice)


def test_accounts_register_log_in_and_refusal(pages, accounts_router) -> None:
    """--auth accounts: "Create account" registers and logs in on one connection; a
    wrong password is refused on the login form, and nothing reconnects."""
    name, password = uniq("acct"), "correct horse battery"
    page = pages(http_url(accounts_router))
    page.fill("#login-user", name)
    page.fill("#login-password", password)
    page.click("#register-btn")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "online")
    expect(page.locator("#me")).to_have_text(f"{name} (web)")

    other = pages(http_url(accounts_router))
    other.fill("#login-user", name)
    other.fill("#login-password", "wrong")
    other.click("#login-submit")
    expect(other.locator("#login-error")).to_contain_text("UNAUTHORIZED")
    expect(other.locator("#login-view")).to_be_visible()
    expect(other.locator("#conn-state")).to_have_attribute("data-state", "closed")
    expect(other.locator("#reconnect-btn")).to_be_hidden()
    # Registering the same name again: CONFLICT.
    other.fill("#login-password", password)
    other.click("#register-btn")
    expect(other.locator("#login-error")).to_contain_text("CONFLICT")
    # And the right password logs in.
    other.click("#login-submit")
    expect(other.locator("#conn-state")).to_have_attribute("data-state", "online")
    no_js_errors(page, other)


def test_jwt_token_login(pages, jwt_router) -> None:
    """--auth jwt: the user may be left empty; the page shows the token's subject."""
    sub = uniq("jwt")
    page = pages(http_url(jwt_router))
    page.fill("#login-user", "")
    page.fill("#login-token", make_jwt(JWT_SECRET, sub))
    page.click("#login-submit")
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "online")
    expect(page.locator("#me")).to_have_text(f"{sub} (web)")
    no_js_errors(page)


def test_message_over_the_frame_limit_is_refused_by_the_page(pages, own_router_http) -> None:
    """The page keeps its JSON frames under the router's maxFrameBytes (the router closes
    a WebSocket on a bigger message): a message too large is refused with a notice, the
    connection stays up, and one that fits goes out."""
    r = own_router_http("--max-frame-bytes", "4096")
    a_name, b_name = uniq("alice"), uniq("bob")
    alice, bob = pages(http_url(r)), pages(http_url(r))
    login(alice, a_name)
    login(bob, b_name)
    open_dm(alice, b_name)
    alice.fill("#message-input", "x" * 5000)
    alice.press("#message-input", "Enter")
    expect(alice.locator("#notice")).to_contain_text("too large")
    expect(messages(alice)).to_have_count(0)
    fits = "y" * 2500
    send(alice, fits)
    open_conv(bob, f"dm:{a_name}")
    expect_message(bob, a_name, fits)
    expect(alice.locator("#conn-state")).to_have_attribute("data-state", "online")
    no_js_errors(alice, bob)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
def test_page_and_python_client_exchange_messages(pages, web_router, user, transport: str) -> None:
    """The page (WebSocket, JSON) and a Python client (TCP, or WebSocket with the binary
    subprotocol) talk, directly and in a room."""
    if web_router is None:
        pytest.skip("RINGROUTER_WEB_URL: no router of the test's own to connect a Python client to")
    a_name, py_name = uniq("alice"), user("py")
    alice = pages(http_url(web_router))
    login(alice, a_name)
    addr = web_router.addr if transport == "tcp" else web_router.http_addr
    with ringrouter.Client(addr, py_name, transport=transport) as py:
        py.send(a_name, "from python ✓".encode())
        py.send(a_name, b"\xff\xfe\x00binary")
        open_conv(alice, f"dm:{py_name}")
        expect_message(alice, py_name, "from python ✓")
        expect_message(alice, py_name, "[9 bytes of binary data]")

        send(alice, "from the browser ✓")
        (m,) = recv_messages(py, 1, timeout=TIMEOUT_MS / 1000)
        assert m.sender == a_name
        assert m.payload == "from the browser ✓".encode()
        assert m.room is None

        # A room with both: created by python, joined by name in the page.
        room = uniq("room")
        py.create_room(room)
        alice.fill("#room-join-name", room)
        alice.click("#room-join-btn")
        expect(alice.locator("#conv-title")).to_have_attribute("data-conv", f"room:{room}")
        py.send_room(room, b"python in the room", wait=True)
        expect_message(alice, py_name, "python in the room")
        send(alice, "browser in the room")
        ms = recv_messages(py, 1, timeout=TIMEOUT_MS / 1000)
        assert (ms[0].sender, ms[0].room, ms[0].payload) == (a_name, room, b"browser in the room")
    no_js_errors(alice)


def test_idle_page_answers_heartbeats(pages, own_router_http) -> None:
    """The router's pings are answered: a page idle for several heartbeat timeouts keeps
    its one connection and still gets messages. (The router pings after 500 ms without a
    frame from the page and closes a session silent for 1 s more; the page would ping on
    its own only after 1 s without a frame from the router, which the router's pings
    never let happen.)"""
    r = own_router_http("--heartbeat-interval", "500ms")
    a_name, b_name = uniq("alice"), uniq("bob")
    alice, bob = pages(http_url(r)), pages(http_url(r))
    login(alice, a_name)
    login(bob, b_name)
    time.sleep(4)
    for p in (alice, bob):
        expect(p.locator("#conn-state")).to_have_attribute("data-state", "online")
        expect(p.locator("#conn-state")).to_have_attribute("data-connects", "1")
    open_dm(bob, a_name)
    send(bob, "still there?")
    open_conv(alice, f"dm:{b_name}")
    expect_message(alice, b_name, "still there?")
    expect(alice.locator("#conn-state")).to_have_attribute("data-connects", "1")
    no_js_errors(alice, bob)


def test_page_over_https_uses_wss(pages, own_router_http, tmp_path) -> None:
    """With --tls-cert/--tls-key the page comes over https and connects with wss."""
    from test_transports import make_cert

    cert, key = make_cert(tmp_path)
    r = own_router_http("--tls-cert", str(cert), "--tls-key", str(key))
    url = f"https://{r.http_addr}"
    a_name, b_name = uniq("alice"), uniq("bob")
    # The certificate is self-signed: the browser is told to take it.
    alice = pages(url, ignore_https_errors=True)
    bob = pages(url, ignore_https_errors=True)
    login(alice, a_name)
    login(bob, b_name)
    open_dm(alice, b_name)
    send(alice, "over TLS")
    open_conv(bob, f"dm:{a_name}")
    expect_message(bob, a_name, "over TLS")
    no_js_errors(alice, bob)


def test_page_reconnects_and_sends_what_waited(pages, own_router_http) -> None:
    """The router goes away and comes back on the same port: the page shows the
    connection closed, reconnects by itself, and a message written meanwhile goes out."""
    r = own_router_http()
    a_name, b_name = uniq("alice"), uniq("bob")
    alice = pages(http_url(r))
    login(alice, a_name)
    open_dm(alice, b_name)
    data_dir = r.data_dir
    r.data_dir = None  # kept for the restart
    assert r.terminate() == 0
    expect(alice.locator("#conn-state")).to_have_attribute("data-state", "closed")
    alice.fill("#message-input", "written while offline")
    alice.press("#message-input", "Enter")
    waiting = messages(alice).filter(has_text="written while offline")
    expect(waiting).to_have_attribute("data-state", "pending")

    r2 = own_router_http("--http-listen", r.http_addr, "--data-dir", data_dir)
    try:
        with ringrouter.Client(r2.addr, b_name) as bob:
            expect(alice.locator("#conn-state")).to_have_attribute("data-state", "online", timeout=30_000)
            expect(waiting).to_have_attribute("data-state", "sent")
            (m,) = recv_messages(bob, 1, timeout=TIMEOUT_MS / 1000)
            assert (m.sender, m.payload) == (a_name, b"written while offline")
    finally:
        r2.terminate()
        shutil.rmtree(data_dir, ignore_errors=True)
    no_js_errors(alice)


@pytest.fixture
def own_router_http(own_router) -> Callable[..., Router]:
    if os.environ.get("RINGROUTER_WEB_URL"):
        pytest.skip("RINGROUTER_WEB_URL: the test starts routers of its own")
    return own_router

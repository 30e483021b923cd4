"""The client over TLS (``tls=True``), WebSocket (``transport="ws"``, the router's
HTTP port) and both, against the real router; a certificate the client does not
trust is refused with :class:`ssl.SSLCertVerificationError`; the load engine
over WebSocket and TLS delivers everything it sends.

Certificates are made at run time with the ``openssl`` command line tool
(self-signed, for ``localhost`` and ``127.0.0.1``).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

import ringrouter

from conftest import Router, recv_messages, run_python

CertFiles = Tuple[Path, Path]

OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = localhost
[ext]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
"""


def make_cert(directory: Path) -> CertFiles:
    """A self-signed certificate (its own CA) and its key, as PEM files."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool makes the test certificates; it is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    conf, cert, key = directory / "openssl.cnf", directory / "cert.pem", directory / "key.pem"
    conf.write_text(OPENSSL_CONFIG)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-config", str(conf), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Tuple[CertFiles, CertFiles]:
    """The router's certificate, and another one nobody should trust for it."""
    base = tmp_path_factory.mktemp("certs")
    return make_cert(base / "router"), make_cert(base / "other")


@pytest.fixture(scope="module")
def tls_router(certs: Tuple[CertFiles, CertFiles]) -> Iterator[Router]:
    """A router with TLS on its TCP listener and on its HTTP port."""
    (cert, key), _ = certs
    r = Router(["--tls-cert", str(cert), "--tls-key", str(key), "--shards", "2"])
    yield r
    r.terminate()


@pytest.fixture(scope="module")
def ws_router() -> Iterator[Router]:
    """A router without TLS."""
    r = Router(["--shards", "2"])
    yield r
    r.terminate()


@pytest.fixture
def clients() -> Iterator[Callable[..., ringrouter.Client]]:
    made: List[ringrouter.Client] = []

    def make(*args: object, **kw: object) -> ringrouter.Client:
        c = ringrouter.Client(*args, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def http(r: Router) -> str:
    """The router's HTTP port (the test routers have one on a free port)."""
    assert r.http_addr is not None, "the router printed no 'ringrouter http on' line"
    return r.http_addr


def exchange(a: ringrouter.Client, b: ringrouter.Client) -> None:
    """Direct messages both ways (with and without waiting), in order, and a room."""
    a.send(b.user, b"hello", wait=True)
    (m,) = recv_messages(b, 1)
    assert (m.sender, m.payload) == (a.user, b"hello")
    payloads = [f"m{i}".encode() for i in range(2000)]
    assert b.send_many(a.user, payloads) == len(payloads)
    assert [m.payload for m in recv_messages(a, len(payloads))] == payloads
    big = bytes(range(256)) * 1000
    a.send(b.user, big)
    assert recv_messages(b, 1)[0].payload == big
    room = f"{a.user}-{b.user}"
    a.create_room(room)
    b.join_room(room)
    a.send_room(room, b"to all", wait=True)
    msgs = recv_messages(b, 1)
    assert (msgs[0].room, msgs[0].payload) == (room, b"to all")


def test_tls_login_and_exchange(
    tls_router: Router, certs: Tuple[CertFiles, CertFiles], clients: Callable[..., ringrouter.Client],
    user: Callable[[str], str],
) -> None:
    (cert, _), _ = certs
    a = clients(tls_router.addr, user("tls-a"), tls=True, ca_file=str(cert))
    b = clients(tls_router.addr, user("tls-b"), tls=True, ca_file=cert)  # a Path works too
    exchange(a, b)
    # "localhost" is a name the certificate is valid for, as well as 127.0.0.1.
    port = tls_router.addr.rsplit(":", 1)[1]
    c = clients(f"localhost:{port}", user("tls-c"), tls=True, ca_file=cert)
    c.send(a.user, b"by name", wait=True)
    assert recv_messages(a, 1)[0].payload == b"by name"


def test_ws_login_and_exchange(
    ws_router: Router, clients: Callable[..., ringrouter.Client], user: Callable[[str], str],
) -> None:
    addr = http(ws_router)
    a = clients(addr, user("ws-a"), transport="ws")
    b = clients(addr, user("ws-b"), transport="ws")
    exchange(a, b)
    # A WebSocket session and a TCP session are sessions alike.
    t = clients(ws_router.addr, user("tcp-t"))
    exchange(a, t)


def test_wss_login_and_exchange(
    tls_router: Router, certs: Tuple[CertFiles, CertFiles], clients: Callable[..., ringrouter.Client],
    user: Callable[[str], str],
) -> None:
    (cert, _), _ = certs
    a = clients(http(tls_router), user("wss-a"), transport="ws", tls=True, ca_file=cert)
    b = clients(tls_router.addr, user("wss-b"), tls=True, ca_file=cert)
    exchange(a, b)
    a.close()
    assert a.closed


def test_a_certificate_not_trusted_is_refused(
    tls_router: Router, certs: Tuple[CertFiles, CertFiles], user: Callable[[str], str],
    tmp_path: Path,
) -> None:
    _, (other, _) = certs
    for addr, kw in [
        (tls_router.addr, {"ca_file": other}),
        (http(tls_router), {"ca_file": other, "transport": "ws"}),
        (tls_router.addr, {}),  # the built-in roots do not know a self-signed certificate
    ]:
        with pytest.raises(ssl.SSLCertVerificationError) as e:
            ringrouter.Client(addr, user("mallory"), tls=True, **kw)  # type: ignore[arg-type]
        assert "certificate" in str(e.value), str(e.value)
        # The plain message, as Python's own ssl errors print (not a tuple of args).
        assert str(e.value).startswith("TLS error: "), str(e.value)
        assert e.value.strerror == str(e.value)
        assert isinstance(e.value, OSError)
    # A CA file that does not exist, or holds no certificate: a clear TLS error naming
    # it, not a verification failure (which names the router's certificate).
    with pytest.raises(ssl.SSLError, match="nonexistent") as e:
        ringrouter.Client(tls_router.addr, user("m"), tls=True, ca_file="/nonexistent/ca.pem")
    assert not isinstance(e.value, ssl.SSLCertVerificationError)
    assert str(e.value).startswith("TLS error: "), str(e.value)
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError, match="empty.pem") as e:
        ringrouter.Client(tls_router.addr, user("m"), tls=True, ca_file=str(empty))
    assert not isinstance(e.value, ssl.SSLCertVerificationError)


def test_bad_transport_arguments(ws_router: Router, user: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="udp"):
        ringrouter.Client(ws_router.addr, user("x"), transport="udp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ca_file"):
        ringrouter.Client(ws_router.addr, user("x"), ca_file="ca.pem")


def load_json(*args: str) -> dict:
    p = run_python("-m", "ringrouter.load", "--pairs", "2", "--messages", "20000", "--size", "64",
                   "--json", "--quiet", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_load_over_ws_delivers_everything(ws_router: Router) -> None:
    r = load_json("--addr", http(ws_router), "--transport", "ws")
    assert r["sent"] == 20000
    assert r["delivered"] == r["sent"]
    assert r["lost"] == 0 and r["out_of_order"] == 0


def test_load_over_tls_and_wss_delivers_everything(
    tls_router: Router, certs: Tuple[CertFiles, CertFiles],
) -> None:
    (cert, _), _ = certs
    for addr, transport in [(tls_router.addr, "tcp"), (http(tls_router), "ws")]:
        r = load_json("--addr", addr, "--transport", transport, "--tls", "--ca-file", str(cert))
        assert r["delivered"] == r["sent"] == 20000, (transport, r)
        assert r["lost"] == 0


def test_load_cli_refuses_a_ca_file_without_tls() -> None:
    p = run_python("-m", "ringrouter.load", "--ca-file", "x.pem", "--messages", "1")
    assert p.returncode == 2
    assert "--ca-file needs --tls" in p.stderr

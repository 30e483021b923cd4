"""A scripted fake router for tests of the client against a hostile or broken router:
TCP framing (varint length + protobuf ServerFrame), frames built by hand.

``FakeRouter(script)`` listens on 127.0.0.1:0 (``.addr``); for each connection it
reads the Login, answers it (unless ``login=False``), counts it in ``.logins`` and
runs ``script(sock, rfile)`` on a thread of its own.
"""

from __future__ import annotations

import socket
import threading
from typing import BinaryIO, Callable, List


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_varint(field: int, v: int) -> bytes:
    return _key(field, 0) + varint(v)


def f_bytes(field: int, b) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return _key(field, 2) + varint(len(b)) + b


def frame(body: bytes) -> bytes:
    return varint(len(body)) + body


def server_frame(kind_field: int, msg: bytes) -> bytes:
    return frame(f_bytes(kind_field, msg))


def login_result(user: str = "alice") -> bytes:
    m = (f_varint(1, 1) + f_varint(2, 1) + f_varint(4, 42) + f_bytes(5, user)
         + f_varint(8, 30000) + f_varint(9, 1 << 20))
    return server_frame(1, m)


def deliver(seq: int, sender: str = "bob", payload: bytes = b"x", pad: int = 0) -> bytes:
    m = f_varint(1, seq) + f_bytes(2, sender) + f_bytes(4, payload) + f_varint(5, 1) + f_varint(6, seq)
    if pad:
        m += f_bytes(15, b"\0" * pad)  # an unknown field: skipped by the parser
    return server_frame(3, m)


def ping(nonce: int) -> bytes:
    return server_frame(6, f_varint(1, nonce))


def error(code: int, reason: str) -> bytes:
    return server_frame(5, f_varint(1, code) + f_bytes(2, reason))


def presence(user: str, text: str) -> bytes:
    return server_frame(25, f_bytes(1, user) + f_varint(2, 1) + f_bytes(3, text))


def read_frame(f: BinaryIO) -> bytes:
    n = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = f.read(n)
    if len(body) < n:
        raise EOFError
    return body


def read_all(f: BinaryIO) -> None:
    """Reads (and drops) frames until the client closes."""
    try:
        while True:
            read_frame(f)
    except (EOFError, OSError, ValueError):
        pass


class FakeRouter:
    def __init__(self, script: Callable[[socket.socket, BinaryIO], None], login: bool = True) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.script = script
        self.login = login
        self.logins = 0
        self.conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        try:
            if self.login:
                read_frame(f)
                self.logins += 1
                c.sendall(login_result())
            self.script(c, f)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def rss_mb(pid: str = "self") -> float:
    with open("/proc/%s/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return -1.0

"""Transports for probes: tcp, tls (TCP port), ws, wss (GET /ws, ringrouter.v1 binary)."""
import sys, os, socket, ssl, struct, base64, select, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import varint, field, msg, parse, read_varint, SF

def cf(kind, body):
    """ClientFrame bytes (no length prefix)."""
    if isinstance(body, dict) and not body:
        return varint((kind << 3) | 2) + varint(0)
    return field(kind, body if isinstance(body, (bytes, bytearray)) else msg(body))

def ws_frame(payload, opcode=2):
    mask = os.urandom(4); n = len(payload)
    h = bytes([0x80 | opcode])
    if n < 126: h += bytes([0x80 | n])
    elif n < 65536: h += bytes([0x80 | 126]) + struct.pack(">H", n)
    else: h += bytes([0x80 | 127]) + struct.pack(">Q", n)
    p = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else _xor(payload, mask)
    return h + mask + p

def _xor(p, mask):
    n = len(p); m = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(p, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")

def ws_open(http, proto):
    """A WebSocket on HTTP (host:port) with subprotocol PROTO: (socket, bytes read past the 101)."""
    hh, hp = http.rsplit(":", 1)
    s = socket.create_connection((hh, int(hp))); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {proto}\r\n\r\n").encode())
    b = b""
    while b"\r\n\r\n" not in b: b += s.recv(4096)
    assert b" 101 " in b, b
    return s, b.split(b"\r\n\r\n", 1)[1]

class T:
    def __init__(self, addr, kind, rcvbuf=None):
        host, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.connect((host, int(port)))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind in ("tls", "wss"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname="localhost")
        self.s = s; self.kind = kind; self.buf = bytearray(); self.ws = kind in ("ws", "wss")
        self.max_seq = 0; self.closed = None
        if self.ws:
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ringrouter.v1\r\n\r\n").encode())
            while b"\r\n\r\n" not in self.buf:
                d = s.recv(65536)
                if not d: raise EOFError("ws handshake")
                self.buf += d
            i = self.buf.index(b"\r\n\r\n") + 4
            head = bytes(self.buf[:i]); del self.buf[:i]
            assert b" 101 " in head, head
    def enc(self, kind, body):
        m = cf(kind, body)
        return ws_frame(m) if self.ws else varint(len(m)) + m
    def send(self, kind, body): self.s.sendall(self.enc(kind, body))
    def raw(self, b): self.s.sendall(b)
    def _one(self):
        """-> message bytes or None (need more)."""
        b = self.buf
        if self.ws:
            if len(b) < 2: return None
            op = b[0] & 0x0f; n = b[1] & 0x7f; i = 2
            if n == 126:
                if len(b) < 4: return None
                n = struct.unpack(">H", b[2:4])[0]; i = 4
            elif n == 127:
                if len(b) < 10: return None
                n = struct.unpack(">Q", b[2:10])[0]; i = 10
            if len(b) < i + n: return None
            p = bytes(b[i:i+n]); del b[:i+n]
            if op == 8: self.closed = p; raise EOFError("ws close %r" % p)
            if op == 9: self.s.sendall(ws_frame(p, 10)); return b""
            if op in (10,): return b""
            return p
        else:
            if not b: return None
            try: l, i = read_varint(b, 0)
            except IndexError: return None
            if len(b) < i + l: return None
            p = bytes(b[i:i+l]); del b[:i+l]; return p
    def recv(self, timeout=5.0):
        end = time.time() + timeout
        while True:
            m = self._one()
            if m == b"": continue
            if m is not None:
                d = parse(m); k = next(iter(d)); inner = parse(d[k][0]); name = SF.get(k, str(k))
                if name == "ping": self.send(5, {1: inner.get(1, [0])[0]})
                if name == "deliver" and inner.get(1, [0])[0]: self.max_seq = max(self.max_seq, inner[1][0])
                return name, inner
            left = end - time.time()
            if left <= 0: return None
            if not (isinstance(self.s, ssl.SSLSocket) and self.s.pending()):
                r, _, _ = select.select([self.s], [], [], left)
                if not r: return None
            d = self.s.recv(1 << 20)
            if not d: raise EOFError("closed")
            self.buf += d
    def wait(self, name, timeout=10):
        end = time.time() + timeout
        while True:
            r = self.recv(max(0.01, end - time.time()))
            if r is None: raise TimeoutError(name)
            if r[0] == name: return r[1]
    def login(self, user, device=None):
        l = {2: user}
        if device: l[5] = device
        self.send(1, l); return self.wait("login_result")
    def close(self):
        try: self.s.close()
        except Exception: pass

"""A victim's ListRooms latency while attackers make the storage thread look for
history that is not there (History `before` / MarkRead of an unknown msg_id, finding A) or
list thousands of conversations (ListConversations limit 1, finding B).

    python bench/history-lookup-dos.py ROUTER_BIN lookup [SESSIONS] [SECONDS]
    python bench/history-lookup-dos.py ROUTER_BIN list [SESSIONS] [SECONDS]

`lookup`: one direct conversation filled to its byte bound (64 MiB) with ~32 KB messages
whose client-chosen msg_ids alternate low and high (so every chunk's id range holds any
id), then SESSIONS sessions each keep 16 History{before=<absent id>} in flight.
`list`: one user with 3000 direct conversations, each with a 60 KB last message, then
SESSIONS sessions of that user each keep 16 ListConversations{limit=1} in flight.
Prints the cost of one attacking request alone (latency, history chunks read from
/metrics) and the victim's ListRooms latency (p50/p99) before and under the attack.
Python stdlib only (the wire protocol is encoded here).
"""
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


# ---------------------------------------------------------------- protobuf, by hand
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v) if v else b""


def field_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b if b else b""


def client_frame(kind_num, body):
    frame = field_bytes(kind_num, body) if body else varint(kind_num << 3 | 2) + b"\0"
    return varint(len(frame)) + frame


def login(user):
    return client_frame(1, field_varint(1, 1) + field_bytes(2, user) + field_bytes(5, "bench"))


def send(to, payload, msg_id, rid=0):
    body = field_varint(1, rid) + field_bytes(2, to) + field_bytes(4, payload)
    body += field_varint(5, 1 if rid else 0) + field_varint(6, msg_id)
    return client_frame(2, body)


def history(rid, peer, before, limit=50):
    return client_frame(40, field_varint(1, rid) + field_bytes(2, peer)
                        + field_varint(4, before) + field_varint(5, limit))


def list_convs(rid, limit):
    return client_frame(41, field_varint(1, rid) + field_varint(2, limit))


def list_rooms(rid):
    return client_frame(16, field_varint(1, rid))


def pong(nonce):
    return client_frame(5, field_varint(1, nonce))


def parse(buf):
    """(field number, wire type, value) of each field of a message."""
    i, out = 0, []
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(buf, i)
        elif wt == 2:
            n, i = read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.append((num, wt, v))
    return out


def read_varint(b, i):
    shift = v = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        if not x & 0x80:
            return v, i
        shift += 7


class Conn:
    def __init__(self, addr, user):
        self.s = socket.create_connection(addr)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.s.sendall(login(user))
        kind, body = self.next()
        assert kind == 1, kind

    def next(self):
        """The next (kind, body) that is not a Ping (answered) or a Deliver."""
        while True:
            while True:
                try:
                    n, i = read_varint(self.buf, 0)
                    if len(self.buf) >= i + n:
                        frame, self.buf = self.buf[i:i + n], self.buf[i + n:]
                        break
                except IndexError:
                    pass
                d = self.s.recv(1 << 20)
                if not d:
                    raise EOFError
                self.buf += d
            (kind, _, body), = parse(frame)
            if kind == 6:  # Ping
                nonce = dict((f, v) for f, _, v in parse(body)).get(1, 0)
                self.s.sendall(pong(nonce))
                continue
            if kind == 3:  # Deliver
                continue
            return kind, body

    def call(self, frame):
        self.s.sendall(frame)
        return self.next()

    def close(self):
        self.s.close()


def status(body):
    return dict((f, v) for f, _, v in parse(body)).get(2, 0)


# ---------------------------------------------------------------- router
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(http, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def victim_latencies(addr, seconds):
    c = Conn(addr, "victim")
    lat = []
    end = time.time() + seconds
    rid = 1
    while time.time() < end:
        t = time.perf_counter()
        kind, _ = c.call(list_rooms(rid))
        lat.append(time.perf_counter() - t)
        rid += 1
    c.close()
    lat.sort()
    return lat


def fmt(lat):
    if not lat:
        return "none"
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
    return f"n={len(lat)} p50={p(0.5):.2f} ms p99={p(0.99):.2f} ms max={lat[-1] * 1e3:.1f} ms"


def attacker(addr, user, make, stop, counts, idx):
    c = Conn(addr, user)
    rid = 1
    for _ in range(16):
        c.s.sendall(make(rid))
        rid += 1
    n = 0
    while not stop.is_set():
        c.next()
        n += 1
        c.s.sendall(make(rid))
        rid += 1
    counts[idx] = n
    c.close()


def main():
    binary, mode = sys.argv[1], sys.argv[2]
    sessions = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    port, http = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="rr-dos-")
    proc = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{http}",
         "--data-dir", data, "--shards", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = ("127.0.0.1", port)
    for _ in range(200):
        try:
            socket.create_connection(addr).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        run(addr, http, mode, sessions, seconds)
    finally:
        proc.terminate()
        proc.wait(30)


def run(addr, http, mode, sessions, seconds):
    Conn(addr, "victim").close()
    if mode in ("lookup", "lookup-plain", "page"):
        Conn(addr, "peer").close()
        a = Conn(addr, "attacker")
        payload = os.urandom(32_000)
        n = 2200  # ~70 MB: past the 64 MiB bound, so the conversation is full
        for i in range(n):
            mid = (i + 1) if i % 2 == 0 else (1 << 54) - 1 - i  # low, high, one shard
            if mode in ("lookup-plain", "page"):
                mid = 0  # the router's ids: every chunk's ranges narrow
            a.s.sendall(send("peer", payload, mid, rid=i + 1))
            if i % 64 == 63:
                while a.next()[0] != 2:
                    pass
        a.call(send("peer", b"end", 0 if mode in ("lookup-plain", "page") else 12345, rid=10**6))
        time.sleep(2.5)  # written (--history-flush-every 1s)
        make = lambda rid: history(rid, "peer", 1 << 40, 50)  # absent, inside the range
        if mode == "page":
            make = lambda rid: history(rid, "peer", 0, 50)  # the newest page: a reference
        users = ["attacker"] * sessions
    else:
        me = "lister"
        Conn(addr, me).close()
        a = Conn(addr, me)
        payload = os.urandom(60_000)
        n = 3000
        for i in range(n):
            Conn(addr, f"p{i}").close()
        for i in range(n):
            a.s.sendall(send(f"p{i}", payload, 0, rid=i + 1))
            if i % 64 == 63:
                while a.next()[0] != 2:
                    pass
        a.call(send("p0", b"end", 0, rid=10**6))
        time.sleep(2.5)
        make = lambda rid: list_convs(rid, 1)
        users = [me] * sessions
    # One attacking request alone: its latency and the chunks it reads.
    c = Conn(addr, users[0])
    c.call(make(1))
    r0 = metric(http, "ringrouter_history_chunk_reads_total")
    lat = []
    for rid in range(2, 22):
        t = time.perf_counter()
        kind, body = c.call(make(rid))
        lat.append(time.perf_counter() - t)
    r1 = metric(http, "ringrouter_history_chunk_reads_total")
    c.close()
    lat.sort()
    print(f"{mode}: one request alone: status {status(body)} (kind {kind}), "
          f"{fmt(lat)}, chunks read per request {(r1 - r0) / 20:.1f}")
    print(f"victim ListRooms, idle:        {fmt(victim_latencies(addr, 2.0))}")
    stop = threading.Event()
    counts = [0] * sessions
    ts = [threading.Thread(target=attacker, args=(addr, u, make, stop, counts, i))
          for i, u in enumerate(users)]
    r0 = metric(http, "ringrouter_history_chunk_reads_total")
    for t in ts:
        t.start()
    time.sleep(0.5)
    v = victim_latencies(addr, seconds)
    stop.set()
    for t in ts:
        t.join()
    r1 = metric(http, "ringrouter_history_chunk_reads_total")
    total = sum(counts)
    print(f"victim ListRooms, {sessions} attackers: {fmt(v)}")
    print(f"attack requests answered: {total} ({total / (seconds + 0.5):.0f}/s), "
          f"chunks read {r1 - r0:.0f}")


if __name__ == "__main__":
    main()

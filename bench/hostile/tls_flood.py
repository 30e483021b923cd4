"""TLS handshakes against live sessions: does a flood of new TLS connections slow the
sessions already logged in?

  openssl req -x509 -newkey rsa:2048 -nodes -keyout /tmp/k.pem -out /tmp/c.pem -days 1 -subj /CN=localhost
  read pid tcp http dir < <(bench/hostile/start.sh tls --tls-cert /tmp/c.pem --tls-key /tmp/k.pem)
  python3 bench/hostile/tls_flood.py $tcp $pid PROCS SECONDS [WIDTH]; kill $pid

A victim session (TLS, logged in) pings every 20 ms from the start; after 2 quiet seconds
PROCS processes open TLS connections as fast as they can for SECONDS: full handshakes one
after the other, then close; or, with WIDTH, WIDTH connections at a time that each send a
ClientHello made once (no crypto on the flooder's side), read the router's answer and
close. Prints, per second, the victim's ping round trips and the handshakes completed,
then the router's CPU."""
import multiprocessing as mp
import os
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import frame, read_varint, parse, SF  # noqa: E402


def ctx():
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def tls_conn(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx().wrap_socket(s, server_hostname="localhost")


def client_hello():
    """A ClientHello's bytes, made once: sending them costs the flooder no crypto, while
    the router answers each with its key exchange and signature."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    o = ctx().wrap_bio(inc, out, server_hostname="localhost")
    try:
        o.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def hello_flooder(addr, until, counter, failed, width):
    """`width` connections at a time, each sends the ClientHello, reads the router's
    first answer and closes."""
    import selectors
    hello = client_hello()
    host, port = addr.rsplit(":", 1)
    sel = selectors.DefaultSelector()
    live = 0
    while time.time() < until:
        while live < width:
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
                s.sendall(hello)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
                live += 1
            except Exception:
                with failed.get_lock():
                    failed.value += 1
                time.sleep(0.01)
                break
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                got = s.recv(65536)
            except BlockingIOError:
                continue
            except Exception:
                got = b""
            sel.unregister(s)
            s.close()
            live -= 1
            if got:
                with counter.get_lock():
                    counter.value += 1
            else:
                with failed.get_lock():
                    failed.value += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def flooder(addr, until, counter, failed, width):
    if width > 0:
        return hello_flooder(addr, until, counter, failed, width)
    while time.time() < until:
        try:
            s = tls_conn(addr)
            s.close()
            with counter.get_lock():
                counter.value += 1
        except Exception:
            with failed.get_lock():
                failed.value += 1
            time.sleep(0.01)


def read_frame(s, buf):
    while True:
        if buf:
            try:
                n, i = read_varint(buf, 0)
            except IndexError:
                n = None
            if n is not None and len(buf) >= i + n:
                body = bytes(buf[i:i + n])
                del buf[:i + n]
                d = parse(body)
                kind = next(iter(d))
                return SF.get(kind, kind)
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        p = f.read().rsplit(")", 1)[1].split()
    return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")


def main():
    addr, pid, procs, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    width = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    v = tls_conn(addr)
    buf = bytearray()
    v.sendall(frame(1, {2: "victim"}))
    assert read_frame(v, buf) == "login_result"
    lat = []
    lock = threading.Lock()
    stop = False

    def probe():
        i = 0
        while not stop:
            i += 1
            t0 = time.time()
            v.sendall(frame(4, {1: i}))
            while read_frame(v, buf) != "pong":
                pass
            with lock:
                lat.append((t0, (time.time() - t0) * 1000))
            time.sleep(0.02)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    counter = mp.Value("l", 0)
    failed = mp.Value("l", 0)
    start = time.time()
    flood_at = start + 2
    until = flood_at + secs
    time.sleep(2)
    c0 = cpu(pid)
    ps = [mp.Process(target=flooder, args=(addr, until, counter, failed, width)) for _ in range(procs)]
    for p in ps:
        p.start()
    last = 0
    for sec in range(int(secs) + 2):
        time.sleep(1)
        with lock:
            got = [ms for (t0, ms) in lat if flood_at + sec <= t0 < flood_at + sec + 1]
        n = counter.value
        got.sort()
        line = "no samples" if not got else (
            f"n={len(got)} p50={got[len(got) // 2]:.2f}ms p99={got[int(len(got) * 0.99)]:.2f}ms "
            f"max={got[-1]:.2f}ms")
        print(f"t={sec + 1:2d}s handshakes/s={n - last:5d} failed={failed.value} victim ping {line}",
              flush=True)
        last = n
    for p in ps:
        p.join()
    stop = True
    t.join(5)
    c1 = cpu(pid)
    allflood = sorted(ms for (t0, ms) in lat if flood_at <= t0 < until)
    if allflood:
        print(f"during the flood: victim ping n={len(allflood)} p50={allflood[len(allflood) // 2]:.2f}ms "
              f"p99={allflood[int(len(allflood) * 0.99)]:.2f}ms max={allflood[-1]:.2f}ms; "
              f"handshakes {counter.value} ({counter.value / secs:.0f}/s), failed {failed.value}; "
              f"router cpu {c1 - c0:.2f}s")


if __name__ == "__main__":
    main()

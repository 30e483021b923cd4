"""A user's own devices' copies of its DMs. User A has K live devices that all read (and
drop); S of them send DMs (MODE dm: to live peer P who reads and acks; MODE nouser: to a
user that does not exist) in a loop. Honest users homed on A's shard are measured meanwhile.
usage: own_copies.py TCP HTTP PID K S MODE SECONDS"""
import sys, os, time, threading, select, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, K, S, mode, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], float(sys.argv[7])
host, port = tcp.rsplit(":", 1)
def raw_login(user, dev):
    s = socket.create_connection((host, int(port))); s.sendall(frame(1, {2: user, 5: dev}))
    s.settimeout(5); d = s.recv(4096); s.setblocking(False); return s, d
def shard_of(user):
    c = Conn(tcp, user); sh = c.login_result.get(6, [0])[0]; c.close(); return sh
A = os.environ.get("AUSER", "A")
ash = shard_of(A)
# honest users on A's shard
names = []; i = 0
while len(names) < 5:
    n = f"h{i}"; i += 1
    if shard_of(n) == ash: names.append(n)
P = os.environ.get("PUSER", "P")
print(f"A shard {ash}; P shard {shard_of(P)}; honest {names}", flush=True)
time.sleep(1.2)
devs = [raw_login(A, f"a{i}")[0] for i in range(K)]
probes = [Probe(tcp, names[0], "ping"), Probe(tcp, names[1], "ping"), Probe(tcp, names[2], "store")] if os.environ.get("PROBES","1")=="1" else []
hp = HonestPair(tcp, names[3], names[4])
stop = False; rx = [0]; pdeliv = [0]
ps = None
if mode in ("dm", "mark"):
    ps, _ = raw_login(P, "p0")
def preader():
    ps.setblocking(True); ps.settimeout(0.5)
    buf = bytearray(); n = 0; lastack = time.time()
    while not stop:
        try: d = ps.recv(1 << 20)
        except socket.timeout: d = b""
        except Exception: return
        buf += d; i = 0; L = len(buf)
        while i < L:
            l = 0; s = 0; j = i
            while j < L:
                c = buf[j]; j += 1; l |= (c & 0x7f) << s; s += 7
                if not c & 0x80: break
            else: break
            if j + l > L: break
            if buf[j] == 0x1a: n += 1
            i = j + l
        del buf[:i]
        pdeliv[0] = n
        if n and time.time() - lastack > 0.01:
            ps.sendall(frame(3, {1: n})); lastack = time.time()
if ps: threading.Thread(target=preader, daemon=True).start()
def reader(socks):
    while not stop:
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            try: d = s.recv(1 << 20); rx[0] += len(d)
            except Exception: pass
threading.Thread(target=reader, args=(devs,), daemon=True).start()
time.sleep(2)
print("baseline:", [p.take() for p in probes], "dm", hp.lat(10), f"rss={rss(pid)/1024:.0f}MiB", flush=True)
to = P if mode == "dm" else "nosuchuser"
blk = b"".join(frame(2, {2: to, 4: b"m" * 20}) for _ in range(500)) if mode != "mark" else b"".join(frame(18, {2: P, 4: 1000 + i}) for i in range(500))
sent = [0]
RATE = float(os.environ.get("RATE", "0"))
def att(s):
    s.setblocking(True); per = 500 * S / RATE if RATE else 0; nxt = time.time()
    while not stop:
        if per:
            nxt += per; d = nxt - time.time()
            if d > 0: time.sleep(d)
        try: s.sendall(blk); sent[0] += 500
        except Exception as e: print("att", e, flush=True); return
for s in devs[:S]: threading.Thread(target=att, args=(s,), daemon=True).start()
dms = hp.loop(lambda: not stop)
MN = ("sessions", "deliveries_total", "pending_bytes", "slow_consumer_closes_total", "store_queue_requests", "messages_in_total", "unacked_messages")
c0 = cpu(pid); t0 = time.time(); s0 = 0; r0 = 0; p0 = 0
while time.time() - t0 < secs:
    time.sleep(5)
    c = cpu(pid); m = metrics(http, MN); l = sorted(dms); dms.clear()
    print(f"t={time.time()-t0:.0f}s sent/s={(sent[0]-s0)/5:.0f} P_deliv/s={(pdeliv[0]-p0)/5:.0f} copies_rx={(rx[0]-r0)/5/2**20:.1f}MiB/s cpu={c-c0:.1f}s rss={rss(pid)/1024:.0f}MiB hwm={hwm(pid)/1024:.0f}MiB {m}", flush=True)
    print("   honest:", [p.take() for p in probes], f"dm n={len(l)} p50={l[len(l)//2] if l else 0:.1f} max={l[-1] if l else 0:.1f}ms", flush=True)
    s0 = sent[0]; r0 = rx[0]; c0 = c; p0 = pdeliv[0]
stop = True
time.sleep(0.5)
for s in devs: s.close()
if ps: ps.close()
time.sleep(1)
print("after:", [p.take() for p in probes], "dm", hp.lat(10), f"rss={rss(pid)/1024:.0f}MiB", flush=True)
for p in probes: p.close()

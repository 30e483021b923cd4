"""Big stored DMs to a user with D devices that read and ack. usage:
  big_dm.py TCP HTTP PID KIND(tcp|wsjson) D SECS SIZE [WINDOW]
Recipient on shard 1 (D devices, each reads and acks every delivery); a sender on shard 0
(plain TCP) sends SIZE-byte DMs with want_result, WINDOW in flight. Checks every device
got every message once, in order."""
import sys, os, re, base64; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hh import *
tcp, http, pid, kind, D, secs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
W = int(sys.argv[8]) if len(sys.argv) > 8 else 4
rcpt = names_on("bigr", 1, 1)[0]; sender = names_on("bigs", 0, 1)[0]
SEQ = re.compile(rb'"seq":\s*"(\d+)"'); MID = re.compile(rb'"payload":\s*"([A-Za-z0-9+/=]{0,16})')
class JWS:
    def __init__(self, user, dev):
        self.s, self.buf = ws_open(http, "ringrouter.v1.json"); self.buf = bytearray(self.buf)
        self.send({"login": {"user": user, "device": dev}})
    def send(self, obj): self.s.sendall(ws_frame(json.dumps(obj).encode(), 1))
    def msgs(self):
        """yields complete text messages (handles pings)"""
        while True:
            b = self.buf
            while len(b) >= 2:
                op = b[0] & 15; n = b[1] & 127; i = 2
                if n == 126: n = struct.unpack(">H", b[2:4])[0]; i = 4
                elif n == 127: n = struct.unpack(">Q", b[2:10])[0]; i = 10
                if len(b) < i + n: break
                p = bytes(b[i:i+n]); del b[:i+n]
                if op == 8: raise EOFError(p)
                if op == 9: self.s.sendall(ws_frame(p, 10)); continue
                if op in (1, 2): yield p
            d = self.s.recv(1 << 20)
            if not d: raise EOFError("closed")
            b += d
import struct
got = [[] for _ in range(D)]; errs = []
def device(k):
    try:
        if kind == "tcp":
            c = Conn(tcp, rcpt, device=f"d{k}", auto_ack=False)
            while True:
                r = c.recv(60)
                if r is None: break
                if r[0] == "deliver":
                    got[k].append(r[1][4][0][:12]); c.send_frame(3, {1: r[1][1][0]})
                elif r[0] == "error": errs.append((k, r[1])); break
        else:
            j = JWS(rcpt, f"d{k}")
            for m in j.msgs():
                if m.startswith(b'{"deliver"') or b'"deliver"' in m[:20]:
                    seq = SEQ.search(m)
                    pm = MID.search(m)
                    got[k].append(base64.b64decode(pm.group(1)[:16])[:12] if pm else b"?")
                    j.send({"ack": {"upToSeq": seq.group(1).decode()}})
                elif b'"error"' in m[:20]: errs.append((k, m[:200])); break
    except Exception as e:
        errs.append((k, repr(e)[:200]))
ths = [threading.Thread(target=device, args=(k,), daemon=True) for k in range(D)]
for t in ths: t.start()
time.sleep(3)
s = Conn(tcp, sender)
G = ("pending_bytes", "unacked_bytes", "sessions", "slow_consumer_closes_total", "memory_closes_total")
print("start", f"rss={rssm(pid):.0f}MiB", pick(metrics_all(http), *G), flush=True)
pad = os.urandom(size - 12)
sent = 0; ok = 0; bad = {}; inflight = 0; t0 = time.time(); peak = 0; last = t0
while time.time() - t0 < secs:
    while inflight < W:
        sent += 1; s.send_frame(2, {1: sent, 2: rcpt, 4: b"%012d" % sent + pad, 5: True}); inflight += 1
    r = s.recv(10)
    if r is None: print("sender: no result in 10 s", flush=True); break
    if r[0] == "send_result":
        inflight -= 1; st = r[1].get(2, [0])[0]
        if st == 1: ok += 1
        else: bad[st] = bad.get(st, 0) + 1
    if time.time() - last > 2:
        last = time.time(); rr = rssm(pid); peak = max(peak, rr)
        print(f"t={last-t0:.0f} sent={sent} ok={ok} bad={bad} rss={rr:.0f}MiB {pick(metrics_all(http), *G)}", flush=True)
while inflight and (r := s.recv(10)):
    if r[0] == "send_result":
        inflight -= 1; st = r[1].get(2, [0])[0]
        if st == 1: ok += 1
        else: bad[st] = bad.get(st, 0) + 1
time.sleep(3)
exp = [b"%012d" % i for i in range(1, sent + 1)]
for k in range(D):
    g = got[k]
    if g != exp[:len(g)] or len(g) != ok:
        print(f"device {k}: got {len(g)} (unique {len(set(g))}) of ok={ok} sent={sent}; in order={g == sorted(g)}", flush=True)
print(f"done sent={sent} ok={ok} bad={bad} peak={peak:.0f} hwm={hwmm(pid):.0f}MiB errs={errs[:3]} per-device={min(map(len,got))}..{max(map(len,got))}", pick(metrics_all(http), *G), flush=True)

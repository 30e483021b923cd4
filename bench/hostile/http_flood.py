"""HTTP port flood: N keep-alive connections each pipelining P requests of PATH (GET, or a body),
reading answers, for SECONDS; honest pings (2 users), ListRooms and DM latency meanwhile.
usage: http_flood.py TCP HTTP PID N P SECONDS PATH [KEYFILE] [METHOD] [BODY]"""
import sys, os, time, socket, select, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, N, P, secs, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
key = open(sys.argv[8]).read().strip() if len(sys.argv) > 8 and sys.argv[8] != "-" else None
method = sys.argv[9] if len(sys.argv) > 9 else "GET"
body = sys.argv[10].encode() if len(sys.argv) > 10 else b""
hdr = f"{method} {path} HTTP/1.1\r\nhost: x\r\n" + (f"authorization: Bearer {key}\r\n" if key else "") + \
      (f"content-type: application/json\r\ncontent-length: {len(body)}\r\n" if body else "") + "\r\n"
req = hdr.encode() + body
host, port = http.rsplit(":", 1)
probes = [Probe(tcp, "hp1", "ping"), Probe(tcp, "hp2", "ping"), Probe(tcp, "hp3", "ping"), Probe(tcp, "hs1", "store")]
hp = HonestPair(tcp)
time.sleep(2)
print("baseline:", [p.take() for p in probes], "dm", hp.lat(10), flush=True)
c0 = cpu(pid)
socks = []
for i in range(N):
    s = socket.create_connection((host, int(port))); s.setblocking(False); socks.append(s)
state = {s: [bytearray(), 0] for s in socks}  # buf, outstanding
done = [0]; codes = {}; bytes_in = [0]
def fire(s):
    try: s.send(req * P); state[s][1] += P
    except BlockingIOError: pass
for s in socks: fire(s)
t0 = time.time(); last = t0; lastdone = 0
dms = []
stopdm = False
def dmloop():
    while not stopdm:
        try: dms.append(hp.dm_ms())
        except Exception as e: dms.append(99999)
        time.sleep(0.05)
th = threading.Thread(target=dmloop, daemon=True); th.start()
while time.time() - t0 < secs and socks:
    r, _, _ = select.select(socks, [], [], 0.2)
    for s in r:
        try: d = s.recv(1 << 20)
        except (BlockingIOError, ConnectionResetError): d = b"" if False else None
        if d is None: continue
        if not d:
            socks.remove(s); continue
        bytes_in[0] += len(d)
        b = state[s][0]; b += d
        while True:
            i = b.find(b"\r\n\r\n")
            if i < 0: break
            h = bytes(b[:i]).decode(errors="replace")
            cl = 0
            for l in h.split("\r\n")[1:]:
                if l.lower().startswith("content-length:"): cl = int(l.split(":")[1])
            if len(b) < i + 4 + cl: break
            code = h.split(" ")[1]; codes[code] = codes.get(code, 0) + 1
            del b[:i + 4 + cl]; done[0] += 1; state[s][1] -= 1
        if state[s][1] == 0: fire(s)
    if time.time() - last >= 5:
        now = time.time(); c = cpu(pid)
        l = sorted(dms); dms.clear()
        print(f"t={now-t0:.0f}s req/s={(done[0]-lastdone)/(now-last):.0f} rx={bytes_in[0]/2**20:.0f}MiB router_cpu={c-c0:.1f}s rss={rss(pid)/1024:.0f}MiB codes={codes} honest:", [p.take() for p in probes],
              f"dm n={len(l)} p50={l[len(l)//2] if l else 0:.1f} max={l[-1] if l else 0:.1f}ms", flush=True)
        last = now; lastdone = done[0]; c0 = c
stopdm = True; th.join()
for s in socks: s.close()
time.sleep(1)
print("after:", [p.take() for p in probes], "dm", hp.lat(10), f"rss={rss(pid)/1024:.0f}MiB", flush=True)
for p in probes: p.close()

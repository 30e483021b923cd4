"""Direct live-frame amplification: victim user V has D devices (READ=1: they read and drop
everything; else never read); attacker A has K devices, each floods MODE frames to V:
  eph     Send{to_user V, ephemeral, payload 16 B}      -> one Deliver per V device
  receipt MarkRead{to_user V, msg_id i}                 -> one Receipt per V device + per other A device
Honest pings (3 users), ListRooms and a DM pair measured meanwhile.
usage: dm_live_amp.py TCP HTTP PID D K MODE SECONDS"""
import sys, os, time, threading, select, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, D, K, mode, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], float(sys.argv[7])
READ = os.environ.get("READ", "1") == "1"
host, port = tcp.rsplit(":", 1)
def raw_login(user, dev):
    s = socket.create_connection((host, int(port))); s.sendall(frame(1, {2: user, 5: dev}))
    s.settimeout(5); s.recv(4096); s.setblocking(False); return s
vs = [raw_login("V", f"v{i}") for i in range(D)]
atts = [raw_login("A", f"a{i}") for i in range(K)]
probes = [Probe(tcp, "hp1", "ping"), Probe(tcp, "hp2", "ping"), Probe(tcp, "hp3", "ping"), Probe(tcp, "hs1", "store")]
hp = HonestPair(tcp)
time.sleep(2)
print("baseline:", [p.take() for p in probes], "dm", hp.lat(10), flush=True)
MN = ("sessions", "deliveries_total", "pending_bytes", "slow_consumer_closes_total", "errors_total", "page_reads_waiting", "store_queue_requests")
stop = False; rx = [0]
def reader(socks):
    while not stop:
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            try:
                d = s.recv(1 << 20); rx[0] += len(d)
            except Exception: pass
if mode == "eph":
    blk = b"".join(frame(2, {2: "V", 4: b"typing.........", 7: True}) for _ in range(500))
else:
    blk = b"".join(frame(18, {2: "V", 4: 1000 + i}) for i in range(500))
sent = [0]
def att(s):
    s.setblocking(True)
    while not stop:
        try: s.sendall(blk); sent[0] += 500
        except Exception as e: print("att", e, flush=True); return
if READ: threading.Thread(target=reader, args=(vs,), daemon=True).start()
threading.Thread(target=reader, args=(atts,), daemon=True).start()
ths = [threading.Thread(target=att, args=(s,), daemon=True) for s in atts]
[t.start() for t in ths]
dms = hp.loop(lambda: not stop)
c0 = cpu(pid); t0 = time.time(); s0 = 0; r0 = 0
m0 = metrics(http, MN)
while time.time() - t0 < secs:
    time.sleep(5)
    c = cpu(pid); m = metrics(http, MN); l = sorted(dms); dms.clear()
    print(f"t={time.time()-t0:.0f}s frames/s={(sent[0]-s0)/5:.0f} rx/s={(rx[0]-r0)/5/2**20:.1f}MiB deliveries/s={(m.get('deliveries_total',0)-m0.get('deliveries_total',0))/5:.0f} cpu={c-c0:.1f}s rss={rss(pid)/1024:.0f}MiB {m}", flush=True)
    print("   honest:", [p.take() for p in probes], f"dm n={len(l)} p50={l[len(l)//2] if l else 0:.1f} max={l[-1] if l else 0:.1f}ms", flush=True)
    s0 = sent[0]; r0 = rx[0]; c0 = c; m0 = m
stop = True
time.sleep(0.5)
for s in vs + atts: s.close()
time.sleep(1)
print("after:", [p.take() for p in probes], "dm", hp.lat(10), f"rss={rss(pid)/1024:.0f}MiB", flush=True)
for p in probes: p.close()

"""Typing-indicator / read-receipt flood into a big live room.
usage: live_flood.py TCP PID HTTP DDIR MEMBERS READERS MODE(ephemeral|receipt|normal) SECONDS PAYLOAD
MEMBERS sessions join room 'big'; READERS of them read as fast as they can, the rest never read.
An honest member 'hA' (in big) pings; 'hB' -> 'hC' in room 'small' measure message delivery latency."""
import sys, time, threading, select, socket
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *

tcp, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
N, R, mode, secs, psize = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], float(sys.argv[8]), int(sys.argv[9])
def hwm(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmHWM"): return int(l.split()[1])
def st(tag):
    m = metrics(http, ("sessions","slow_consumer_closes_total","store_queue_requests","store_queue_bytes","deliveries_total","bytes_out_total","room_messages_total"))
    print(f"[{tag}] rss={rss(pid)/1024:.0f}MiB hwm={hwm(pid)/1024:.0f}MiB cpu={cpu(pid):.2f}s disk={du(ddir)/2**20:.1f}MiB {m}", flush=True)

members = []
for i in range(N):
    members.append(Conn(tcp, f"m{i}"))
    if i % 200 == 0: print("logged", i, flush=True)
hA = Conn(tcp, "hA"); hB = Conn(tcp, "hB"); hC = Conn(tcp, "hC")
att = Conn(tcp, "att")
names = [f"m{i}" for i in range(N)] + ["hA"]
att.send_frame(10, {1: 1, 2: "big", 4: names}); r = att.wait("room_result", 60); print("create big", r.get(2), flush=True)
hB.send_frame(10, {1: 1, 2: "small", 4: ["hC"]}); print("create small", hB.wait("room_result").get(2), flush=True)
# one real message in big so receipts name a kept msg_id
att.send_frame(2, {1: 7, 3: "big", 4: b"x", 5: True}); r = att.wait("send_result", 30); mid = r.get(4, [0])[0] or 1
print("msg id", mid, flush=True)
for c in members + [hA, hB, hC]: c.drain(0.01)
time.sleep(1)
readers = members[:R]
stop = False
rbytes = [0]
def reader():
    socks = [c.s for c in readers] + [hA.s]
    for s in socks: s.setblocking(False)
    while not stop:
        r, _, _ = select.select(socks, [], [], 0.1)
        for s in r:
            if s is hA.s: continue
            try: rbytes[0] += len(s.recv(1 << 20))
            except Exception: pass
# small-room latency probe hB -> hC
lat = []
def small_probe():
    i = 0
    while not stop:
        i += 1; t0 = time.time()
        hB.send_frame(2, {1: 1000+i, 3: "small", 4: b"p%d" % i})
        try:
            while True:
                n, d = hC.recv(10)
                if n == 'deliver': break
            lat.append((time.time()-t0)*1000)
        except Exception: lat.append(10000)
        hC.ack(); hB.drain(0); time.sleep(0.02)
# ping probe on hA (its own thread reading its own socket)
plat = []
def ping_probe():
    i = 0
    hA.s.setblocking(True)
    while not stop:
        i += 1; t0 = time.time()
        hA.send_frame(4, {1: i})
        try: hA.wait("pong", 30); plat.append((time.time()-t0)*1000)
        except Exception: plat.append(30000)
        time.sleep(0.02)
def summ(l):
    if not l: return "none"
    l = sorted(l); return f"n={len(l)} p50={l[len(l)//2]:.1f}ms p99={l[int(len(l)*.99)]:.1f}ms max={l[-1]:.1f}ms"
threads = [threading.Thread(target=f, daemon=True) for f in (reader, small_probe)]
for t in threads: t.start()
pt = threading.Thread(target=ping_probe, daemon=True); pt.start()
time.sleep(3)
print("baseline small-room", summ(lat), "| ping hA", summ(plat), flush=True); lat.clear(); plat.clear()
st("before")
# attacker
if mode == "ephemeral": fr = frame(2, {3: "big", 4: b"t" * psize, 7: True})
elif mode == "receipt": fr = frame(18, {3: "big", 4: mid})
else: fr = frame(2, {3: "big", 4: b"t" * psize})
batch = fr * 200
sent = [0]
def attacker():
    while not stop:
        try: att.s.sendall(batch); sent[0] += 200
        except Exception as e: print("att err", e); return
def att_drain():
    while not stop:
        r, _, _ = select.select([att.s], [], [], 0.2)
        if r:
            try:
                if not att.s.recv(1 << 20): print("att closed"); return
            except Exception as e: print("att recv", e); return
ta = threading.Thread(target=attacker, daemon=True); ta.start()
threading.Thread(target=att_drain, daemon=True).start()
c0 = cpu(pid); t0 = time.time(); s0 = 0
for k in range(int(secs)):
    time.sleep(1)
    c1 = cpu(pid); s1 = sent[0]
    print(f"t={k+1}s att_frames/s={s1-s0} router_cpu={c1-c0:.2f} small={summ(lat)} ping={summ(plat)} readers_MB={rbytes[0]/1e6:.0f}", flush=True)
    st(f"t{k+1}")
    lat.clear(); plat.clear(); c0 = c1; s0 = s1
stop = True
time.sleep(1)
print("total attacker frames", sent[0], flush=True)
st("after")

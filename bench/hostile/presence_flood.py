"""SetPresence churn by a user with many online contacts.
usage: presence_flood.py TCP PID HTTP DDIR CONTACTS SECONDS DEVICES"""
import sys, time, threading, select
sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from common import *
tcp, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
N, secs, D = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
cs = [Conn(tcp, f"c{i}") for i in range(N)]
P = Conn(tcp, "P", device="d0")
for i in range(N): P.send_frame(20, {1: i+1, 2: f"c{i}", 3: 1})
for i in range(N): P.wait("contact_result", 30)
for i, c in enumerate(cs):
    c.send_frame(20, {1: 1, 2: "P", 3: 2})
for c in cs: c.wait("contact_result", 30)
devs = [P] + [Conn(tcp, "P", device=f"d{j}") for j in range(1, D)]
hB = Conn(tcp, "hB"); hC = Conn(tcp, "hC")
for c in cs + devs: c.drain(0.01)
time.sleep(1.5)
for c in cs: c.drain(0.001)
pres = [0]; stop = False
def reader():
    socks = {c.s: c for c in cs}
    while not stop:
        r, _, _ = select.select(list(socks), [], [], 0.1)
        for s in r:
            c = socks[s]
            try:
                c._fill(0)
                while True:
                    x = c.recv(0)
                    if x is None: break
                    if x[0] == 'presence': pres[0] += 1
            except Exception: pass
lat = []
def probe():
    i = 0
    while not stop:
        i += 1; t0 = time.time()
        hB.send_frame(2, {1: i, 2: "hC", 4: b"p"})
        try:
            while hC.recv(10)[0] != 'deliver': pass
            lat.append((time.time()-t0)*1000)
        except Exception: lat.append(10000)
        hC.ack(); hB.drain(0); time.sleep(0.02)
def summ(l):
    if not l: return "none"
    l = sorted(l); return f"n={len(l)} p50={l[len(l)//2]:.1f}ms p99={l[int(len(l)*.99)]:.1f}ms max={l[-1]:.1f}ms"
threading.Thread(target=reader, daemon=True).start(); threading.Thread(target=probe, daemon=True).start()
time.sleep(2); print("baseline", summ(lat), "presence frames", pres[0], flush=True); lat.clear(); pres[0] = 0
batch = b"".join(frame(25, {2: 1 + (k % 3), 3: ("x" * 200) + str(k)}) for k in range(300))
sent = [0]
def att(d):
    while not stop:
        try: d.s.sendall(batch); sent[0] += 300
        except Exception as e: print("att", e); return
def att_drain():
    socks = [d.s for d in devs]
    while not stop:
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            try: s.recv(1 << 20)
            except Exception: pass
for d in devs: threading.Thread(target=att, args=(d,), daemon=True).start()
threading.Thread(target=att_drain, daemon=True).start()
c0 = cpu(pid); s0 = 0
for k in range(int(secs)):
    time.sleep(1); c1 = cpu(pid); s1 = sent[0]
    print(f"t={k+1} setpresence/s={s1-s0} router_cpu={c1-c0:.2f} presence_rx/s={pres[0]} dm={summ(lat)} rss={rss(pid)/1024:.0f}MiB", flush=True)
    lat.clear(); pres[0] = 0; c0 = c1; s0 = s1
stop = True
print(metrics(http, ("sessions","errors_total","slow_consumer_closes_total")))

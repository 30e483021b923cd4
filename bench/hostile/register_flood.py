"""A Register flood under --auth accounts while an honest user logs in with its password
again and again. CONNS threads each connect, send 3 Registers (the per-connection bound),
read the answers and reconnect, for SECONDS; prints the honest login's latency (p50, max)
and statuses, the Register answers by status, and the router's CPU every 3 s.
usage: register_flood.py TCPADDR PID HTTPADDR DATADIR CONNS SECONDS
(start the router with bench/hostile/start.sh NAME --auth accounts; from helper E's
review, finding 2)"""
import sys, time, threading, os, urllib.request
sys.path.insert(0, os.path.dirname(__file__))
from wire import *
tcp, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
K, secs = int(sys.argv[5]), float(sys.argv[6])
def metrics(names):
    out = {}
    try:
        t = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
    except Exception as e:
        return {"err": str(e)}
    for l in t.splitlines():
        for n in names:
            if l.startswith("ringrouter_" + n + " "): out[n] = float(l.split()[-1])
    return out
c = Conn(tcp); c.send_frame(30, {1: 1, 2: "alice", 3: "pw-alice"}); print("register alice", c.wait("account_result").get(2)); c.close()
stop = False; res = {}; lock = threading.Lock()
def att(t):
    n = 0
    while not stop:
        try:
            c = Conn(tcp)
            for j in range(3):
                n += 1; c.send_frame(30, {1: j+1, 2: f"u{t}x{n}", 3: "p" * 64})
            for j in range(3):
                r = c.wait("account_result", 60); st = r.get(2, [0])[0]
                with lock: res[st] = res.get(st, 0) + 1
            c.close()
        except Exception:
            with lock: res['exc'] = res.get('exc', 0) + 1
lat = []; lst = {}; all_lat = []
def honest():
    while not stop:
        t0 = time.time()
        try:
            c = Conn(tcp, "alice", password="pw-alice"); st = c.login_result.get(2, [0])[0]; c.close()
        except Exception: st = 'exc'
        lat.append((time.time()-t0)*1000); lst[st] = lst.get(st, 0) + 1
        time.sleep(0.1)
def summ(l):
    if not l: return "none"
    l = sorted(l); return f"n={len(l)} p50={l[len(l)//2]:.0f}ms max={l[-1]:.0f}ms"
h = threading.Thread(target=honest, daemon=True); h.start()
time.sleep(3); print("baseline login", summ(lat), lst, f"cpu={cpu(pid):.1f}", flush=True); lat.clear(); lst.clear()
for t in range(K): threading.Thread(target=att, args=(t,), daemon=True).start()
c0 = cpu(pid); statuses = {}
for k in range(int(secs)):
    time.sleep(1); c1 = cpu(pid)
    if k % 3 == 2 or k == secs - 1:
        print(f"t={k+1} register results={res} login={summ(lat)} {lst} cpu/s={(c1-c0)/3:.2f} rss={rss(pid)/1024:.0f}MiB jobs={metrics(('store_password_jobs',))}", flush=True)
        all_lat += lat
        for s, n in lst.items(): statuses[s] = statuses.get(s, 0) + n
        lat.clear(); lst.clear(); c0 = c1
stop = True
print("during the flood: login", summ(all_lat), statuses, "registers", res)

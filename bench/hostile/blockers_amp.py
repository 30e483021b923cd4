"""A user blocked by more than --max-loaded-blockers sends CreateRoom with ~10 000 initial
members, one of them a loaded blocker: each frame is a store read of every other member
(blockers_among, one contains_key each, on the storage thread), then refused FORBIDDEN,
which takes nothing from --max-member-adds-per-minute. Loop it from many sessions and time
other users' logins and ListRooms."""
import sys, os, time, threading, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *

BIN = sys.argv[1]; SESS = int(sys.argv[2]) if len(sys.argv) > 2 else 16
NMEM = int(sys.argv[3]) if len(sys.argv) > 3 else 9999
DUR = float(sys.argv[4]) if len(sys.argv) > 4 else 25
import tempfile; ddir = tempfile.mkdtemp(prefix="rr-blockers-amp-")
p, tcp, http = start_router(BIN, ddir, sys.argv[5:])
print("router", p.pid, tcp, http, flush=True)
# 1100 users block "spam" (the first 1024 by name are loaded with its list)
Conn(tcp, "spam").close(); time.sleep(0.2)
t0 = time.time()
NB = int(os.environ.get("NB", "1100"))
def blockers(lo, hi):
    for i in range(lo, hi):
        c = Conn(tcp, "blk%04d" % i)
        c.send_frame(20, {1: 1, 2: "spam", 3: 5}); r = c.wait("contact_result")
        if r.get(2, [0])[0] != 1: print("block", i, r, flush=True)
        c.close()
ths = [threading.Thread(target=blockers, args=(i, min(NB, i+100))) for i in range(0, NB, 100)]
[t.start() for t in ths]; [t.join() for t in ths]
print(f"blocks set up in {time.time()-t0:.1f}s", flush=True)
time.sleep(1)
# sorted, the loaded blocker comes last: dm_refusal looks at every other member first
members = [("a" + "x" * 58 + "%05d" % i) for i in range(NMEM - 1)] + ["blk0000"]
body = {1: 1, 2: "room", 4: members}
fr = frame(10, body)
print("frame bytes", len(fr), flush=True)

def honest_login_ms():
    t0 = time.time(); c = Conn(tcp, "honestlogin"); dt = (time.time()-t0)*1000; c.close(); return dt

# baseline
pr = Probe(tcp, "honest", "store", 0.02)
sp_shard = Conn(tcp, "spam", device="probe").login_result.get(6, [0])[0]
i = 0
while True:
    c = Conn(tcp, "pinger%d" % i); sh = c.login_result.get(6, [0])[0]; c.close()
    if sh == sp_shard: break
    i += 1
pp = Probe(tcp, "pinger%d" % i, "ping", 0.01)
print("spam shard", sp_shard, "pinger", i, flush=True)
base = [honest_login_ms() for _ in range(20)]; time.sleep(1)
print("baseline ping(same shard)", pp.take(), "listrooms", pr.take(), "login max %.1fms p50 %.1fms" % (max(base), sorted(base)[10]), flush=True)
print("rss0", rss(p.pid)//1024, "MiB", flush=True)
stop = False; counts = [0]; statuses = {}
def spam(dev):
    c = Conn(tcp, "spam", device="d%d" % dev)
    while not stop:
        c.raw(fr)
        r = c.wait("room_result", 60)
        st = r.get(2, [0])[0]; statuses[st] = statuses.get(st, 0) + 1
        counts[0] += 1
    c.close()
ts = [threading.Thread(target=spam, args=(d,), daemon=True) for d in range(SESS)]
[t.start() for t in ts]
def threads():
    out = {}
    for t in os.listdir(f"/proc/{p.pid}/task"):
        try:
            comm = open(f"/proc/{p.pid}/task/{t}/comm").read().strip()
            f = open(f"/proc/{p.pid}/task/{t}/stat").read().rsplit(")",1)[1].split()
            out[comm+"/"+t] = (int(f[11])+int(f[12]))/os.sysconf("SC_CLK_TCK")
        except OSError: pass
    return out
th0 = threads()
t_end = time.time() + DUR
lats = []
while time.time() < t_end:
    time.sleep(2.5)
    l = [honest_login_ms() for _ in range(5)]; lats += l
    print(f"t={DUR-(t_end-time.time()):.0f}s frames={counts[0]} statuses={statuses} ping {pp.take()} listrooms {pr.take()} login max={max(l):.0f}ms rss={rss(p.pid)//1024}MiB lookups={metric(http,'blocker_lookups_total')}", flush=True)
th1 = threads()
print("thread cpu over the attack:", {k: round(th1[k]-th0.get(k,0),1) for k in th1 if th1[k]-th0.get(k,0) > 0.2})
stop = True; time.sleep(1)
lats.sort(); print(f"login during attack: n={len(lats)} p50={lats[len(lats)//2]:.0f}ms max={lats[-1]:.0f}ms")
pr.close(); p.terminate(); p.wait(10); print("exit", p.returncode)

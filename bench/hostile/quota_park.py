"""Owner (homed on the room's shard) pipelines [JoinRoom(room it owns), K x Send(room)]: the
Sends park behind the Join in room_quota and are released at once by next_own.
usage: quota_park.py TCP HTTP M K SECS [MODE]   MODE: join (default) | create"""
import os, sys, threading, time, select
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, M, K, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
mode = sys.argv[6] if len(sys.argv) > 6 else "join"
S = 0
members = names_on("qm", S, M); login_all(tcp, members)
owner = names_on("qowner", S, 1)[0]; room = names_on("qroom", S, 1)[0]
o = Conn(tcp, owner, device="d1"); print("owner shard", o.login_result.get(6), flush=True)
o.send_frame(10, {1: 1, 2: room, 4: members}); r = o.wait("room_result", 120)
print("room", room, r.get(2), r.get(3), flush=True)
print("peak before", gauges(http), flush=True)
o.s.setblocking(True)
if mode == "join":
    blk = frame(11, {1: 7, 2: room}) + b"".join(frame(2, {3: room, 4: b"hello"}) for _ in range(K))
stop = False; sent = [0]
MAXB = int(os.environ.get('MAXBLOCKS','1000000000'))
write_loop(o.s, blk, 1, sent, lambda: stop, MAXB)
watch(http, secs, lambda: f"blocks={sent[0]}")
stop = True

"""Others keep shard 0's store busy (run dm_flood.py beside it) while one member sends
messages one at a time, each with a result, to a room of M offline members homed on
shard 0: prints how long each waits for its SendResult.
usage: bigroom_starve.py TCP HTTP M K
NONMEMBER=1: the messages come from a user who is not a member (refused FORBIDDEN)."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, M, K = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
members = names_on("sm", 0, M); login_all(tcp, members)
room = names_on("sroom", 0, 1)[0]
o = Conn(tcp, names_on("sowner", 0, 1)[0])
o.send_frame(10, {1: 1, 2: room, 4: members}); print("room", o.wait("room_result", 120).get(2), flush=True)
time.sleep(float(os.environ.get("DELAY", "8")))
if os.environ.get("NONMEMBER"): o = Conn(tcp, names_on("sstranger", 0, 1)[0])
for k in range(K):
    t0 = time.time(); o.send_frame(2, {1: 100 + k, 3: room, 4: b"big", 5: True})
    try: r = o.wait("send_result", 60); s = r.get(2)
    except TimeoutError: s = "timeout"
    print(f"msg {k}: {s} after {(time.time()-t0)*1000:.0f} ms {gauges(http, 'store_queue_requests')}", flush=True)

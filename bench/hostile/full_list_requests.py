"""full_list_requests.py TCP HTTP PID U SECS [TS]: U users 'tgt*' homed on shard TS whose lists are
full (presence_load.py's setup: 5 000 entries each) pipeline ContactOp Requests to names not in
their lists, in a loop: each is refused on the user's own side (its list is full, RATE_LIMITED)
before any peer is asked; checking that used to clone the whole list (5 000 entries) per request.
Prints the router's CPU over the attack."""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, pid, U, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
TS = int(sys.argv[6]) if len(sys.argv) > 6 else 1
users = names_on("tgt", TS, U)
stop = [False]; sent = [0]
c0 = cpu(pid)
for j, u in enumerate(users):
    blk = b"".join(frame(20, {1: i+1, 2: f"nobody{j}x{i}", 3: 1}) for i in range(256))
    write_loop(Conn(tcp, u).s, blk, 256, sent, lambda: stop[0], float("inf"))
ta = time.time()
while time.time() - ta < secs:
    time.sleep(2)
    print(f"[att t={time.time()-ta:.0f}] sent={sent[0]} rss={rss(pid)/1024:.0f}MiB cpu=+{cpu(pid)-c0:.1f}s", flush=True)
stop[0] = True

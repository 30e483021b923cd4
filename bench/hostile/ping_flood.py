"""ping_flood.py TCP HTTP PID U SECS [ping|badop]: U sessions homed on shard 1 ('pf*') each write
Pings (or ContactOps with an unknown action: refused BAD_REQUEST) in a loop for SECS, reading and
dropping the answers. Each frame is cheap, but a read's worth of them (~6 500 Pings in 64 KiB) is
~8 ms of the shard: run probe.py on shard 1 meanwhile (at a higher priority than this script:
`nice -n 15 python3 ping_flood.py ...`, `nice -n -10 python3 probe.py $tcp 1 10 x`)."""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, pid, U, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
kind = sys.argv[6] if len(sys.argv) > 6 else "ping"
users = names_on("pf", 1, U)
stop = [False]; sent = [0]; c0 = cpu(pid)
for j, u in enumerate(users):
    if kind == "ping": blk = b"".join(frame(4, {1: i+1}) for i in range(256))
    else: blk = b"".join(frame(20, {1: i+1, 2: f"nobody{j}x{i}", 3: 7}) for i in range(256))
    write_loop(Conn(tcp, u).s, blk, 256, sent, lambda: stop[0], float("inf"))
ta = time.time()
while time.time() - ta < secs:
    time.sleep(2); print(f"[att t={time.time()-ta:.0f}] sent={sent[0]} cpu=+{cpu(pid)-c0:.1f}s", flush=True)
stop[0] = True

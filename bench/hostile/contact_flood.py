"""contact_flood.py TCP HTTP PID U SECS [TS] [N]: U attacker users 'cfl*' (homed on shard 1-TS) each
pipeline ContactOp Requests over N offline targets 'tgt*' homed on shard TS whose lists are full
(presence_load.py's setup: lists of 5 000). Each request needs the target's whole list on its home
shard (the peer side of the exchange) before it is refused (the list is full): 5 000 entries read
from the store per request (shard::contacts::with_contacts_in_turn)."""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, pid, U, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
TS = int(sys.argv[6]) if len(sys.argv) > 6 else 1
N = int(sys.argv[7]) if len(sys.argv) > 7 else 16
targets = names_on("tgt", TS, N)
atts = names_on("cfl", 1 - TS, U)
stop = [False]; sent = [0]
for j in range(U):
    blk = b"".join(frame(20, {1: i+1, 2: targets[(i + j) % N], 3: 1}) for i in range(4 * N))
    write_loop(Conn(tcp, atts[j]).s, blk, 4 * N, sent, lambda: stop[0], float("inf"))
ta = time.time()
while time.time() - ta < secs:
    time.sleep(2)
    print(f"[att t={time.time()-ta:.0f}] sent={sent[0]} rss={rss(pid)/1024:.0f}MiB {metrics(http, ('store_requests_total','store_queue_requests','page_reads_waiting'))}", flush=True)
stop[0] = True

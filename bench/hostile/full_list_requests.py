"""full_list_requests.py TCP PID U N: U users 'tgt*' homed on shard 1 whose lists are full
(presence_load.py's setup: 5 000 entries each) each pipeline N ContactOp Requests to names not in
their lists and read the N answers: each is refused on the user's own side (its list is full,
RATE_LIMITED) before any peer is asked. Prints the router's CPU for them (checking a request
cloned the whole list, 5 000 entries, until ContactRecord::plan).
A/B on copies of one store: cp -r BASE D; start the router on D; run this (U=10, N=4000)."""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, pid, U, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
users = names_on("tgt", 1, U)
conns = [Conn(tcp, u) for u in users]
time.sleep(1)
c0 = cpu(pid); t0 = time.time()
counts = [dict() for _ in users]
def run(j, c):
    blk = b"".join(frame(20, {1: i+1, 2: f"nobody{j}x{i}", 3: 1}) for i in range(N))
    th = threading.Thread(target=lambda: c.s.sendall(blk)); th.start()
    for _ in range(N):
        r = c.wait("contact_result", 60); s = r.get(2, [0])[0]; counts[j][s] = counts[j].get(s, 0) + 1
    th.join()
ths = [threading.Thread(target=run, args=(j, c)) for j, c in enumerate(conns)]
for t in ths: t.start()
for t in ths: t.join()
total = {}
for d in counts:
    for k, v in d.items(): total[k] = total.get(k, 0) + v
print(f"{U}x{N} requests in {time.time()-t0:.1f}s router cpu +{cpu(pid)-c0:.2f}s statuses {total}")

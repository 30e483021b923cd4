"""room_scan.py TCP HTTP PID U R SECS: setup (unless SKIP_SETUP): 'rown' creates R rooms, U users 'rj*'
(half on each shard) join all of them (max_rooms_per_user 1 000). Attack for SECS: the U users pipeline
JoinRoom of names that do not exist: each is admitted by own_rooms (shard::rooms::admit_own: plain
store_req), which scans every membership key of the user (R of them) before the room is looked up."""
import sys, os, time, socket, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, pid, U, R, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
rooms = [f"sr{i:05d}" for i in range(R)]
users = names_on("rj", 0, U // 2) + names_on("rj", 1, U - U // 2)
def pipe(c, frames, want, n):
    th = threading.Thread(target=lambda: c.s.sendall(b"".join(frames))); th.start()
    counts = {}
    for _ in range(n):
        r = c.wait(want, 120); s = r.get(2, [0])[0]; counts[s] = counts.get(s, 0) + 1
    th.join(); return counts
t0 = time.time()
if not os.environ.get("SKIP_SETUP"):
    o = Conn(tcp, "rown")
    print("create", pipe(o, [frame(10, {1: i+1, 2: r}) for i, r in enumerate(rooms)], "room_result", R), f"{time.time()-t0:.0f}s", flush=True)
    def join(u):
        c = Conn(tcp, u); cs = pipe(c, [frame(11, {1: i+1, 2: r}) for i, r in enumerate(rooms)], "room_result", R); c.close()
        print("join", u, cs, f"{time.time()-t0:.0f}s", flush=True)
    ths = [threading.Thread(target=join, args=(u,)) for u in users]
    for t in ths: t.start()
    for t in ths: t.join()
    o.close()
    print(f"setup done {time.time()-t0:.0f}s rss={rss(pid)/1024:.0f}MiB", flush=True)
if secs <= 0: sys.exit()
stop = [False]; sent = [0]
for j in range(U):
    blk = b"".join(frame(11, {1: i+1, 2: f"nx{j}x{i}"}) for i in range(256))
    write_loop(Conn(tcp, users[j]).s, blk, 256, sent, lambda: stop[0], float("inf"))
ta = time.time()
while time.time() - ta < secs:
    time.sleep(2)
    print(f"[att t={time.time()-ta:.0f}] sent={sent[0]} rss={rss(pid)/1024:.0f}MiB {metrics(http, ('store_requests_total','store_queue_requests','page_reads_waiting'))}", flush=True)
stop[0] = True

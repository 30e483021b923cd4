"""Many devices x queued deliveries: U users each get Q offline messages of SIZE B (users offline),
then every user logs in D devices at once (login storm), devices never read (or READ=1: read, never ack).
RSS / pending / unacked gauges and honest DM latency.
usage: devices_backlog.py TCP HTTP PID U D Q SIZE HOLD_SECONDS"""
import sys, os, time, socket, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, U, D, Q, SIZE, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
READ = os.environ.get("READ") == "1"
MN = ("sessions","pending_bytes","unacked_bytes","unacked_messages","slow_consumer_closes_total","offline_stored_total","offline_delivered_total","store_queue_bytes")
def st(tag): status(tag, pid, http, MN, with_cpu=True)
honest = HonestPair(tcp); hlat = honest.dm_ms; lat = honest.lat
for u in range(U): Conn(tcp, f"bk{u}").close()
a = Conn(tcp, "att")
t0 = time.time()
for u in range(U):
    for j in range(Q):
        a.raw(frame(2, {2: f"bk{u}", 4: os.urandom(16) + b"\0" * (SIZE - 16)}))
a.send_frame(2, {1: 9, 2: "hon2", 4: b"sync", 5: True}); a.wait("send_result", 120)
time.sleep(2); st(f"queued {U}x{Q}x{SIZE}B in {time.time()-t0:.1f}s"); print("honest", lat(), flush=True)
host, port = tcp.rsplit(":", 1); socks = []
def login(u, d):
    s = socket.create_connection((host, int(port))); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(frame(1, {2: f"bk{u}", 5: f"dev{d}"})); socks.append(s)
ths = [threading.Thread(target=login, args=(u, d)) for u in range(U) for d in range(D)]
t0 = time.time(); [t.start() for t in ths]; [t.join() for t in ths]
print(f"{len(socks)} devices logged in (storm) in {time.time()-t0:.1f}s", flush=True)
stop = False
def reader(s):
    s.settimeout(1)
    while not stop:
        try:
            if not s.recv(1 << 20): return
        except socket.timeout: pass
        except Exception: return
if READ:
    for s in socks: threading.Thread(target=reader, args=(s,), daemon=True).start()
t0 = time.time()
while time.time() - t0 < hold:
    time.sleep(3); st(f"{time.time()-t0:.0f}s"); print("honest", lat(), flush=True)
    if rss(pid)/1024 > 1900: print("RSS cap"); break
stop = True
for s in socks: s.close()
time.sleep(3); st("closed+3s")

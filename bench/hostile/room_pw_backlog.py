"""One user reconnecting in a loop, each connection pipelining 16 wrong-password JoinRooms to
a password room and closing at once: does the work outlive the sessions (a per-user queue of
Argon2 checks that keeps the hashing pool busy long after the attacker left)? Before the
joins of ended sessions were dropped unhashed, the pool stayed busy 25-30 s after it stopped
(watch ringrouter_store_password_jobs; start the router with --max-failed-room-joins-per-user 0
to see it without the per-user bucket).
usage: room_pw_backlog.py TCP HTTP PID ATTACK_SECS WATCH_SECS [NUSERS]"""
import sys, os, time, socket, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, secs, watch = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
nusers = int(sys.argv[6]) if len(sys.argv) > 6 else 1
tag = str(int(time.time()) % 100000)
o = Conn(tcp, f"bo{tag}")
o.send_frame(10, {1: 1, 2: f"bpw{tag}", 3: "right"}); print("create", o.wait("room_result", 30).get(2))
join = b"".join(frame(11, {1: i + 1, 2: f"bpw{tag}", 3: "wrong"}) for i in range(16))
h, p = tcp.rsplit(":", 1)
def st(tag2):
    print(f"[{tag2}] rss={rss(pid)/1024:.0f}MiB cpu={cpu(pid):.1f}s {metrics(http, ('store_password_jobs','room_password_checks_dropped_total','store_queue_requests','sessions'))}", flush=True)
st("start")
n = [0]
def loop(u):
    t0 = time.time()
    while time.time() - t0 < secs:
        s = socket.create_connection((h, int(p)))
        s.sendall(frame(1, {2: u, 5: "d"}) + join)
        # wait for the LoginResult so the joins are read, then leave
        s.settimeout(5)
        try: s.recv(4096)
        except Exception: pass
        s.close(); n[0] += 1
ts = [threading.Thread(target=loop, args=(f"ba{tag}u{i}",)) for i in range(nusers)]
for t in ts: t.start()
t0 = time.time()
while any(t.is_alive() for t in ts):
    time.sleep(5); st(f"attack t={time.time()-t0:.0f} conns={n[0]} joins_sent={16*n[0]}")
t1 = time.time()
while time.time() - t1 < watch:
    time.sleep(10); st(f"after attack +{time.time()-t1:.0f}s")

"""Page-read turn dilution: A accounts exist (filler); U attacker users, one session each, loop
ListUsers{pattern matching nothing, limit 1000} (a 64-keys-per-name scan, small answer).
Victims' ListRooms/logins are probed meanwhile (run probe.py alongside).
usage: listusers_scan.py TCP HTTP PID A U SECS"""
import sys, os, time, threading, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, pid, A, U, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
host, port = tcp.rsplit(":", 1)
if A:
    t0 = time.time(); login_all(tcp, [f"acct{i:06d}" for i in range(A)], B=500); print(f"{A} accounts in {time.time()-t0:.1f}s", flush=True)
c = Conn(tcp, "lu_single")
for pat in ("*qqqq*", "acct*", "*"):
    t0 = time.time(); c.send_frame(32, {1: 1, 2: pat, 3: 1000}); r = c.wait("account_result", 30)
    print(f"ListUsers {pat!r}: {1000*(time.time()-t0):.1f}ms users={len(r.get(5, []))} status={r.get(2,[0])[0]}", flush=True)
if U <= 0: sys.exit()
go = os.environ.get("WAITGO")
if go:
    while not os.path.exists(go): time.sleep(0.2)
stop = [False]; n = [0]
blk = b"".join(frame(32, {1: i, 2: "*qqqq*", 3: 1000}) for i in range(16))
for j in range(U):
    s = socket.create_connection((host, int(port))); s.sendall(frame(1, {2: f"lu{j:05d}"}))
    write_loop(s, blk, 16, n, lambda: stop[0], float("inf"))
ta = time.time()
while time.time() - ta < secs:
    time.sleep(3)
    print(f"[att t={time.time()-ta:.0f}] rss={rss(pid)/1024:.0f}MiB cpu={cpu(pid):.1f} sent={n[0]} {metrics(http, ('store_requests_total','store_queue_requests','page_reads_waiting'))}", flush=True)
stop[0] = True

"""Slowloris: N connections, each (optionally after Login) sends the varint length prefix of a
LEN-byte frame plus a first byte, then trickles 1 byte/s.  An honest pair measures DM latency.
usage: slowloris.py TCP HTTP PID N LEN MODE(pre|post) SECONDS"""
import sys, os, time, socket
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, N, LEN, mode, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], float(sys.argv[7])
M = ("sessions","connections","pending_bytes","heartbeat_closes_total","connections_refused_total")
def st(tag): status(tag, pid, http, M, with_cpu=True)
honest = HonestPair(tcp); hlat = honest.dm_ms; lat = honest.lat
st("start"); print("honest idle", lat(20), flush=True)
host, port = tcp.rsplit(":", 1)
socks = []
t0 = time.time()
for i in range(N):
    try:
        s = socket.create_connection((host, int(port)), timeout=10)
    except Exception as e:
        print("connect", i, e); break
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if mode == "post":
        s.sendall(frame(1, {2: f"slow{i}"}))
    socks.append(s)
if mode == "post":
    # read the login results (blocking, short timeout)
    ok = 0
    for s in socks:
        s.settimeout(5)
        try:
            if s.recv(65536): ok += 1
        except Exception: pass
    print("logged in", ok, flush=True)
pre = varint(LEN) + b"\x0a"   # declared LEN, first byte of the body
FILL = int(os.environ.get("FILL", "0"))   # body bytes sent at once after the prefix (touches the reservation)
if FILL: pre += b"\x00" * FILL
for s in socks:
    try: s.sendall(pre)
    except Exception: pass
print(f"{len(socks)} connections opened+prefixed in {time.time()-t0:.1f}s", flush=True)
st("prefixed"); print("honest", lat(), flush=True)
alive = len(socks); t1 = time.time(); k = 0
while time.time() - t1 < secs:
    ts = time.time(); dead = 0
    for s in socks:
        try: s.send(b"\x00")
        except Exception: dead += 1
    k += 1
    if k % 5 == 0:
        st(f"{time.time()-t1:.0f}s trickled, dead={dead}"); print("honest", lat(), flush=True)
        if rss(pid) / 1024 > 1900: print("RSS cap"); break
    time.sleep(max(0, 1 - (time.time() - ts)))
st("end")
for s in socks: s.close()
time.sleep(2); st("closed+2s")

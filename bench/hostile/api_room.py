"""POST /api/v1/publish to a room of M offline members, pipelined on N connections that read.
usage: api_room.py TCP HTTP PID KEYFILE M N SECONDS"""
import sys, os, time, threading, socket, select, json
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, keyf, M, N, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
key = open(keyf).read().strip()
members = [f"rm{i:05d}" for i in range(M - 1)]
for m in members: Conn(tcp, m).close()
o = Conn(tcp, "owner"); o.send_frame(10, {1: 1, 2: "bigroom", 4: members}); r = o.wait("room_result", 60); o.close()
print("room", r.get(2), r.get(3), flush=True)
body = json.dumps({"to_room": "bigroom", "payload": "hello"}).encode()
host, port = http.rsplit(":", 1)
req = (f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
req = req * 20
socks = [socket.create_connection((host, int(port))) for _ in range(N)]
for x in socks: x.setblocking(False)
stop = False; rx = [0]; last = [b""]
def run():
    while not stop:
        r, w, _ = select.select(socks, socks, [], 0.2)
        for x in w:
            try: x.send(req)
            except Exception: pass
        for x in r:
            try: d = x.recv(1 << 20); rx[0] += d.count(b"HTTP/1.1 "); last[0] = d[:200]
            except Exception: pass
threading.Thread(target=run, daemon=True).start()
c0 = cpu(pid); t0 = time.time()
while time.time() - t0 < secs:
    time.sleep(5); c = cpu(pid)
    print(f"t={time.time()-t0:.0f} answers={rx[0]} cpu={c-c0:.1f}s rss={rss(pid)/1024:.0f}MiB hwm={hwm(pid)/1024:.0f}MiB {metrics(http, ('store_queue_requests','store_queue_bytes','offline_stored_total','store_bulk_waiting'))} last={last[0][:60]!r}", flush=True); c0 = c
stop = True

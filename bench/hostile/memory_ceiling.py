"""Sessions that never read (4 KiB receive buffers), each sent MSGS DMs of SIZE B by one sender:
what they hold together against --max-memory. Prints RSS and the gauges every 0.5 s (TICKS=8).
usage: memory_ceiling.py TCP HTTP PID N MSGS SIZE"""
import sys, os, time, socket
sys.path.insert(0, "/work/main/bench/hostile")
from common import *
tcp, http, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
N, MSGS, SIZE = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
host, port = tcp.rsplit(":", 1)
sinks = []
for i in range(N):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, int(port))); s.sendall(frame(1, {2: f"sink{i}"})); s.settimeout(5); s.recv(4096)
    sinks.append(s)
snd = socket.create_connection((host, int(port))); snd.sendall(frame(1, {2: "sender"})); snd.settimeout(5); snd.recv(4096)
M = ("sessions","memory_closes_total","requeue_bytes","store_queue_bytes","offline_stored_total","requeued_total")
for i in range(N):
    burst = b"".join(frame(2, {2: f"sink{i}", 4: bytes([m % 256]) * SIZE}) for m in range(MSGS))
    snd.sendall(burst)
for t in range(int(os.environ.get("TICKS","8"))):
    status(f"{t*0.5}s", pid, http, M); time.sleep(0.5)

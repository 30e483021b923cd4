"""Run by test_hostile_router.py in a process of its own: a fake router floods a
client that never calls recv (or never reads what the client writes, for "ping");
prints the growth of this process's resident memory, in MB.

usage: python hostile_memory.py MODE SECONDS
"""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fake_router as fr  # noqa: E402
import ringrouter  # noqa: E402

mode = sys.argv[1]
secs = float(sys.argv[2])
stop = threading.Event()


def script(c, f):
    if mode == "ping":
        chunk = b"".join(fr.ping(i + 1) for i in range(20000))
        while not stop.is_set():
            c.sendall(chunk)  # never reads what the client writes
        return
    seq = 0
    while not stop.is_set():
        batch = []
        for _ in range(64):
            seq += 1
            if mode == "sender":
                batch.append(fr.deliver(seq, sender="s" * 60000, payload=b"p"))
            elif mode == "pad":
                batch.append(fr.deliver(seq, payload=b"p", pad=100000))
            elif mode == "presence":
                batch.append(fr.presence("bob", "t" * 100000))
            elif mode == "error":
                batch.append(fr.error(3, "r" * 100000))
        c.sendall(b"".join(batch))


srv = fr.FakeRouter(script)
c = ringrouter.Client(srv.addr, "alice", timeout=2.0)
base = peak = fr.rss_mb()
t0 = time.time()
while time.time() - t0 < secs:
    time.sleep(0.25)
    peak = max(peak, fr.rss_mb())
    if peak - base > 1500:
        break
stop.set()
print("%.0f" % (peak - base), flush=True)
os._exit(0)

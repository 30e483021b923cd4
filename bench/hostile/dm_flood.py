"""N sessions homed on SSH pipeline DMs to offline users homed on shard 0. usage: dm_flood.py TCP HTTP N SSH SECS NTARGETS"""
import os, sys, time, threading, select
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shardnames import *
tcp, http, N, ssh, secs, NT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
targets = names_on("dt", 0, NT); login_all(tcp, targets)
cs = [Conn(tcp, n) for n in names_on("ds", ssh, N)]
blk = b"".join(frame(2, {2: targets[i % NT], 4: b"x"}) for i in range(3000))
stop = False; sent = [0]
def att(c):
    c.s.setblocking(True)
    keep_reading(c.s, lambda: stop)
    while not stop:
        try: c.s.sendall(blk); sent[0] += 3000
        except Exception: return
for c in cs: threading.Thread(target=att, args=(c,), daemon=True).start()
watch(http, secs, lambda: f"sent={sent[0]}")
stop = True

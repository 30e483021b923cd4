"""WebSocket flood: K logged-in WS sessions that never read send, as fast as they can,
MODE=ping (WS pings of 125 B), frag (ClientFrame Ping split in 1-byte fragments, 1000 frames/message),
or both; an honest TCP pair measures DM latency.
usage: ws_flood.py TCP HTTP PID K SECONDS MODE"""
import sys, os, time, threading, struct
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
from transports import T, ws_frame, cf
tcp, http, pid, K, secs, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
M = ("sessions","pending_bytes","slow_consumer_closes_total","heartbeat_closes_total")
def st(tag): status(tag, pid, http, M, with_cpu=True)
honest = HonestPair(tcp); hlat = honest.dm_ms; lat = honest.lat
def frag_msg(m, n):
    # m split into fragments: first BINARY non-fin, then CONT
    out = b""; pieces = [m[i:i+1] for i in range(len(m))]
    pieces = pieces[:n-1] + [b"".join(pieces[n-1:])] if len(pieces) > n else pieces
    for j, p in enumerate(pieces):
        op = 2 if j == 0 else 0; fin = j == len(pieces) - 1
        f = bytearray(ws_frame(p, op)); 
        if not fin: f[0] &= 0x7f
        out += bytes(f)
    return out
ping = ws_frame(b"p"*125, 9)
body = cf(4, {1: 12345, 15: b"z"*990})   # ClientFrame Ping with an unknown padding field
fm = frag_msg(body, 1000)
blk = {"ping": ping*200, "frag": fm, "both": ping*50 + fm}[mode]
stop = False; sent = [0]
def flood(i):
    t = T(http, "ws", rcvbuf=4096); t.login(f"wsf{i}")
    while not stop:
        try: t.raw(blk); sent[0] += len(blk)
        except Exception as e: print("flooder", i, "ended:", e, flush=True); return
st("start"); base = sorted(hlat() for _ in range(20)); print("honest dm idle p50 %.2fms max %.2fms" % (base[10], base[-1]))
import multiprocessing as mp
def proc(ids):
    ths = [threading.Thread(target=flood, args=(i,), daemon=True) for i in ids]
    [t.start() for t in ths]; time.sleep(secs + 1)
ps = [mp.Process(target=proc, args=(list(range(j, K, 2)),), daemon=True) for j in range(2)]
[p.start() for p in ps]
t0 = time.time(); t1 = t0; lat = []
while time.time() - t0 < secs:
    lat.append(hlat()); time.sleep(0.05)
    if time.time() - t1 > 3:
        t1 = time.time(); l = sorted(lat[-20:]); st(f"{time.time()-t0:.0f}s honest p50={l[len(l)//2]:.1f}ms n={len(l)} max={l[-1]:.1f}ms")
[p.terminate() for p in ps]; l = sorted(lat); print(f"honest dm under flood: n={len(l)} p50={l[len(l)//2]:.1f}ms p99={l[int(len(l)*.99)]:.1f}ms max={l[-1]:.1f}ms")
time.sleep(1); st("end+1s"); time.sleep(5); st("end+6s")

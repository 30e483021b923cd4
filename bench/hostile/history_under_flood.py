"""Mixed: A pipelines NH History pages (1 MiB each) then reads slowly (RATE MB/s), acking deliveries
as it reads (every 64 or 100 ms, like the clients); user 'fl' floods A with 1 KB messages (msg_id 1..).
usage: history_under_flood.py KIND ADDR HTTP [NH] [RATE_MBps] [SECS]   (FLOOD_MBPS=6 in the environment)
  read pid tcp http dir < <(bench/hostile/start.sh mix); python3 bench/hostile/answer_amp.py $tcp $pid $http setup 5000
  FLOOD_MBPS=6 python3 bench/hostile/history_under_flood.py tcp $tcp $http 100 10 15; kill $pid
A session's reader waiting for its own History answer takes the Acks behind it (in the held
chunk and read ahead): before, 100 pipelined pages under a 6 MB/s flood cut it (unacked
reached its bound at ~12 s); now it is not cut."""
import sys, time, threading, os, socket, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transports import *
kind, addr, http = sys.argv[1], sys.argv[2], sys.argv[3]
NH = int(sys.argv[4]) if len(sys.argv) > 4 else 50
RATE = float(sys.argv[5]) if len(sys.argv) > 5 else 4.0
SECS = float(sys.argv[6]) if len(sys.argv) > 6 else 40
A = "amp" + "a"*61
OFF = (int(time.time()) % 100000) * 10**7
def met():
    try: t = urllib.request.urlopen(f"http://{http}/metrics", timeout=3).read().decode()
    except Exception as e: return str(e)
    want = ("ringrouter_pending_bytes ", "ringrouter_unacked_bytes ", "ringrouter_unacked_messages ", "ringrouter_slow_consumer_closes_total ", "ringrouter_sessions ")
    return " ".join(l.replace("ringrouter_", "") for l in t.splitlines() if l.startswith(want))
FRATE = float(os.environ.get("FLOOD_MBPS", "0"))  # 0: unpaced
dr = T(addr, kind); dr.login(A, device="drain"); nd = 0
while True:
    r = dr.recv(1.0)
    if r is None: break
    if r[0] == "deliver": nd += 1
    if nd % 256 == 0 and dr.max_seq: dr.send(3, {1: dr.max_seq})
if dr.max_seq: dr.send(3, {1: dr.max_seq})
time.sleep(0.3); dr.close(); print("drained backlog", nd, flush=True)
fl = T(addr, kind); fl.login("fl", device="flood")
a = T(addr, kind); a.login(A, device="mixed")
a.raw(b"".join(a.enc(40, {1: i, 2: "peer", 5: 500}) for i in range(1, NH+1)))
sent = [0]; stop = [False]
def flood():
    pl = os.urandom(1000); i = 0
    try:
        while not stop[0]:
            b = b"".join(fl.enc(2, {2: A, 4: pl, 6: OFF+i+k+1}) for k in range(64)); i += 64
            fl.raw(b); sent[0] = i
            if FRATE: time.sleep(64 * 1000 / (FRATE * 1e6))
    except Exception as e: print("flooder:", e)
th = threading.Thread(target=flood, daemon=True); th.start()
t0 = time.time(); hist = []; got = []; errs = []; last_ack = time.time(); unacked = 0; rbytes = 0; lastp = t0
closed = None
a.s.setblocking(True)
while time.time() - t0 < SECS:
    # slow reader: at most RATE MB/s
    try:
        while True:
            r = a._one()
            if r is None: break
            if r == b"": continue
            d = parse(r); k = next(iter(d)); m = parse(d[k][0]); name = SF.get(k, str(k))
            if name == "history_result": hist.append(m.get(1, [0])[0])
            elif name == "deliver":
                if m.get(1, [0])[0]: a.max_seq = max(a.max_seq, m[1][0]); unacked += 1
                got.append(m.get(6, [0])[0])
            elif name == "error": errs.append((round(time.time()-t0, 2), m)); 
            elif name == "ping": a.send(5, {1: m.get(1, [0])[0]})
        if unacked and (unacked >= 64 or time.time() - last_ack > 0.1):
            a.send(3, {1: a.max_seq}); unacked = 0; last_ack = time.time()
        a.s.settimeout(0.5)
        try: dd = a.s.recv(int(RATE * 1e6 / 50))
        except socket.timeout: dd = None
        if dd == b"": closed = "EOF"; break
        if dd: a.buf += dd; rbytes += len(dd)
        time.sleep(0.02)
    except (EOFError, OSError) as e: closed = f"{type(e).__name__} {e} at t={time.time()-t0:.2f}s"; break
    if time.time() - lastp > 5:
        lastp = time.time(); print(f"t={lastp-t0:.0f}s hist={len(hist)} delivers={len(got)} flood_sent={sent[0]} read={rbytes/2**20:.0f}MiB | {met()}", flush=True)
    if len(hist) == NH and not closed and time.time() - t0 > 3 and len(got) >= sent[0] - 64*200: pass
stop[0] = True
dt = time.time() - t0
print(f"end t={dt:.1f}s closed={closed} errors={errs[:3]}")
print(f"history results {len(hist)}/{NH} in_order={hist == sorted(hist)}")
mine = [g - OFF for g in got if OFF < g <= OFF + 10**7]
print(f"flood sent {sent[0]} delivered to A (this run) {len(mine)} contiguous_from_1={mine == list(range(1, len(mine)+1))} other(backlog)={len(got)-len(mine)}")
print(met())

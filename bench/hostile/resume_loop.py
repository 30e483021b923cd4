"""Resume loop: D devices of user rv log in with resume, receive M x SIZE B deliveries each cycle
without acking, then every device reconnects with its token TWICE concurrently (one wins, one is
kicked / normal login), reads for a while without acking, and the loop goes on.
usage: resume_loop.py TCP HTTP PID D M SIZE CYCLES"""
import sys, os, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *
tcp, http, pid, D, M, SIZE, C = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
MN = ("sessions","pending_bytes","unacked_bytes","unacked_messages","requeue_bytes","requeued_total","requeue_dropped_total",
      "offline_stored_total","offline_delivered_total","resumes_total","slow_consumer_closes_total","store_queue_bytes")
def st(tag): status(tag, pid, http, MN, with_cpu=True)
honest = HonestPair(tcp); hlat = honest.dm_ms; lat = honest.lat
st("start"); print("honest idle", lat(20), flush=True)
def login(dev, token=None):
    c = Conn(tcp, "rv", device=dev, resume=True, token=token, auto_ack=False)
    lr = c.login_result
    return c, lr.get(10, [b""])[0], lr.get(11, [0])[0]
devs = {}
for i in range(D):
    c, t, _ = login(f"dev{i}"); devs[i] = [c, t]
a = Conn(tcp, "att")
pay = os.urandom(SIZE)
def drain(c, t):
    n = 0; end = time.time() + t
    while time.time() < end:
        try: r = c.recv(0.3)
        except Exception: break
        if r is None: break
        if r[0] == "deliver": n += 1
    return n
for cyc in range(C):
    t0 = time.time()
    blk = b"".join(frame(2, {2: "rv", 4: pay, 8: 0}) for _ in range(100))
    for j in range(M // 100): a.raw(blk)
    # all devices read (no ack), in threads
    got = [0]*D
    def rd(i): got[i] = drain(devs[i][0], 3.0)
    ths = [threading.Thread(target=rd, args=(i,)) for i in range(D)]; [t.start() for t in ths]; [t.join() for t in ths]
    st(f"cycle {cyc} delivered (sum {sum(got)})"); print("honest", lat(), flush=True)
    # cut every device, then resume twice concurrently with the same token
    for i in range(D): devs[i][0].s.close()
    res = {}
    def rs(i, k):
        try: res[(i, k)] = login(f"dev{i}", devs[i][1])
        except Exception as e: res[(i, k)] = e
    ths = [threading.Thread(target=rs, args=(i, k)) for i in range(D) for k in (0, 1)]; [t.start() for t in ths]; [t.join() for t in ths]
    resumed = 0
    for i in range(D):
        r0, r1 = res.get((i, 0)), res.get((i, 1))
        keep = None
        for r in (r0, r1):
            if isinstance(r, tuple) and r[2]: keep = r
        if keep is None: keep = r0 if isinstance(r0, tuple) else r1
        resumed += sum(1 for r in (r0, r1) if isinstance(r, tuple) and r[2])
        for r in (r0, r1):
            if isinstance(r, tuple) and r is not keep: r[0].s.close()
        devs[i] = [keep[0], keep[1]]
    ths = [threading.Thread(target=rd, args=(i,)) for i in range(D)]; [t.start() for t in ths]; [t.join() for t in ths]
    st(f"cycle {cyc} resumed={resumed}/{2*D} backlog read {sum(got)} in {time.time()-t0:.1f}s"); print("honest", lat(), flush=True)
    if rss(pid)/1024 > 1900: print("RSS cap"); break
for i in range(D): devs[i][0].s.close()
time.sleep(3); st("all closed+3s"); print("honest", lat(), flush=True)

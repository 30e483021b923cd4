"""Other users' logins and store requests while clients open direct conversations with
new names as fast as they can (found by a hostile probe: the history flush after such a
storm wrote every conversation entry, a read each, in one go, and held the storage
thread 9-25 s).

    python3 bench/hostile/new_conversations.py ROUTER_BIN [SECONDS] [THREADS] [RECIPIENTS]

RECIPIENTS (default 2 000) users log in once and go; then THREADS (default 4) senders
each log in under a new name, write one small DM to every recipient in one write, wait
for a SendResult and leave, in a loop, for SECONDS (default 45). Meanwhile honest users
log in every 200 ms and ask ListRooms (a store request) every 50 ms. Prints their
latencies (p50 / p99 / max) during the storm and in the 20 s after it, the conversations
made, and the store's entry slices. Python stdlib only (wire protocol: wire.py).
"""
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wire import Conn, frame, metric, rss, start_router  # noqa: E402


def summary(ms):
    if not ms:
        return "n=0"
    ms = sorted(ms)
    return (f"n={len(ms)} p50={ms[len(ms) // 2]:.1f} p99={ms[int((len(ms) - 1) * 0.99)]:.1f} "
            f"max={ms[-1]:.0f} ms")


def main():
    binary = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 45
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    n_rec = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    ddir = tempfile.mkdtemp(prefix="newconv-")
    p, tcp, http = start_router(binary, ddir, ["--shards", "2", "--min-free-disk-bytes", "0"])
    try:
        rec = [f"r{i}" for i in range(n_rec)]
        for r in rec:
            Conn(tcp, r).close()
        stop = threading.Event()
        made = [0]
        phase = ["storm"]
        lat = {("login", "storm"): [], ("login", "after"): [],
               ("store", "storm"): [], ("store", "after"): []}

        def sender(t):
            i = 0
            batch = b"".join(frame(2, {2: r, 4: b"hello"}) for r in rec)
            while not stop.is_set():
                i += 1
                try:
                    c = Conn(tcp, f"s{t}x{i}")
                    c.raw(batch)
                    c.send_frame(2, {1: 1, 2: rec[0], 4: b"x", 5: True})
                    c.wait("send_result", 120)
                    c.close()
                    made[0] += n_rec
                except (OSError, TimeoutError, EOFError) as e:
                    print("sender error", e, flush=True)
                    time.sleep(0.1)

        def probe(kind, every, done):
            c = Conn(tcp, "honest-store") if kind == "store" else None
            i = 0
            while not done.is_set():
                i += 1
                t0 = time.perf_counter()
                try:
                    if kind == "login":
                        Conn(tcp, "honest-login").close()
                    else:
                        c.send_frame(16, {1: i})
                        c.wait("room_result", 120)
                    lat[(kind, phase[0])].append((time.perf_counter() - t0) * 1000)
                except (OSError, TimeoutError, EOFError) as e:
                    print("probe error", kind, e, flush=True)
                time.sleep(every)

        done = threading.Event()
        probes = [threading.Thread(target=probe, args=a, daemon=True)
                  for a in (("login", 0.2, done), ("store", 0.05, done))]
        senders = [threading.Thread(target=sender, args=(t,), daemon=True) for t in range(threads)]
        for t in probes + senders:
            t.start()
        time.sleep(secs)
        stop.set()
        for t in senders:
            t.join(130)
        phase[0] = "after"
        time.sleep(20)
        done.set()
        for t in probes:
            t.join(130)
        print(f"{made[0]} conversations made in {secs:.0f} s by {threads} senders; "
              f"entry slices {metric(http, 'history_entry_slices_total'):.0f}; "
              f"RSS {rss(p.pid) / 1024:.0f} MiB")
        for ph in ("storm", "after"):
            print(f"  {ph}: logins {summary(lat[('login', ph)])}; "
                  f"ListRooms {summary(lat[('store', ph)])}")
    finally:
        p.kill()
        p.wait()


main()

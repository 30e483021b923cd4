"""Other users' logins and store requests while one user's burst of room messages to a
room of offline members is stored (an offline-queue append per message and member).

    python3 bench/offline-storm.py ROUTER_BIN [MEMBERS] [MESSAGES] [SHARDS]

MEMBERS (default 9 999) users are made (one login each, open auth) and put in one room
by its owner; then two probes start, each in its own process: `login` logs a user outside
the room in and out in a loop, `store` sends ListConversations (a store request) in a
loop from a logged-in user. The owner then writes MESSAGES (default 300) room messages
in one write, and the script waits until the router's `offline_stored_total` shows all
MEMBERS x MESSAGES appends. Prints the burst's duration, each probe's samples before and
during it (n, p50 / p99 / max), and the router's CPU. Python stdlib only (the wire
protocol by hand: bench/hostile/wire.py).
"""
import multiprocessing as mp
import os
import sys
import tempfile
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile"))
from wire import Conn, frame, metric, start_router  # noqa: E402  (bench/hostile/wire.py: the protocol by hand)


# ---------------------------------------------------------------- the router
def start(binary, ddir, shards):
    return start_router(binary, ddir, [
        "--shards", str(shards), "--max-member-adds-per-minute", "1000000",
        "--max-frame-bytes", "4194304"])


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return int(st[11]), int(st[12])


# ---------------------------------------------------------------- the probes
def probe(addr, kind, stop, out):
    samples = []
    c = Conn(addr, "storm-probe-store") if kind == "store" else None
    i = 0
    while not stop.is_set():
        i += 1
        t0 = time.time()
        try:
            if kind == "login":
                Conn(addr, "storm-probe-login").close()
            else:
                c.send_frame(41, {1: i, 2: 10})
                c.wait("conversations_result", 60)
            samples.append((t0, (time.time() - t0) * 1000))
        except (OSError, TimeoutError, EOFError) as e:
            print("probe error", kind, e, flush=True)
            time.sleep(0.05)
        time.sleep(0.001)
    out.put((kind, samples))


def summary(samples, a, b=None):
    ms = sorted(m for t, m in samples if (t >= a and (b is None or t <= b)) or
                (b is not None and t < a and t + m / 1000 > a))
    if not ms:
        return "no samples"
    return (f"n={len(ms)} p50={ms[len(ms) // 2]:.2f} p99={ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.2f} "
            f"max={ms[-1]:.2f} ms")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    members = int(sys.argv[2]) if len(sys.argv) > 2 else 9999
    msgs = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    shards = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    with tempfile.TemporaryDirectory() as ddir:
        p, addr, http = start(binary, ddir, shards)
        try:
            for i in range(members):
                Conn(addr, f"storm-m{i}").close()
            o = Conn(addr, "storm-owner")
            o.send_frame(10, {1: 5, 2: "storm", 4: [f"storm-m{i}" for i in range(members)]})
            o.wait("room_result", 120)
            time.sleep(3)
            stop, q = mp.Event(), mp.Queue()
            procs = [mp.Process(target=probe, args=(addr, k, stop, q), daemon=True)
                     for k in ("login", "store")]
            for pr in procs:
                pr.start()
            time.sleep(2)
            base = metric(http, "offline_stored_total")
            cpu0 = cpu_ticks(p.pid)
            t0 = time.time()
            o.raw(b"".join(frame(2, {3: "storm", 4: b"%015d " % i}) for i in range(msgs)))
            want = base + members * msgs
            last = 0.0
            while (stored := metric(http, "offline_stored_total")) < want:
                if time.time() - t0 > 600:
                    sys.exit(f"only {stored - base:.0f} of {want - base:.0f} appends stored in 600 s")
                if os.environ.get("VERBOSE") and time.time() - last > 1:
                    last = time.time()
                    print(f"  {last - t0:5.1f} s: {stored - base:.0f} stored, store queue "
                          f"{metric(http, 'store_queue_requests'):.0f} requests, "
                          f"{metric(http, 'store_bulk_waiting'):.0f} appends waiting", flush=True)
                o.drain(0.05)
            t1 = time.time()
            cpu1 = cpu_ticks(p.pid)
            time.sleep(1)
            stop.set()
            got = dict(q.get(timeout=60) for _ in procs)
            print(f"{msgs} room messages x {members} offline members: "
                  f"{members * msgs} appends stored in {t1 - t0:.2f} s ({shards} shards)")
            for k in ("login", "store"):
                print(f"  {k:5} before: {summary(got[k], t0 - 2, t0)}")
                print(f"  {k:5} during: {summary(got[k], t0, t1)}")
            hz = os.sysconf("SC_CLK_TCK")
            print(f"  router CPU during the burst: user {(cpu1[0] - cpu0[0]) / hz:.2f} s, "
                  f"system {(cpu1[1] - cpu0[1]) / hz:.2f} s")
        except BaseException:
            with open(os.path.join(ddir, "log")) as f:
                print("router log (end):\n" + f.read()[-3000:], file=sys.stderr)
            raise
        finally:
            p.terminate()
            p.wait(60)


if __name__ == "__main__":
    main()

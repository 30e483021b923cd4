"""The login of a user blocked by many, and its direct messages to its blockers, with
every blocker loaded with its list (`--max-loaded-blockers` past them: what the router
did before the bound) against the default bound (1 024).

    python3 bench/blocked-by-many.py ROUTER_BIN [BLOCKERS] [ROUNDS]

BLOCKERS (default 100 000) users block `spammer`, written into a store by
`examples/blockers_bench` (built with cargo). Then, ROUNDS times (default 3), alternating,
the router starts on that store with each setting and `spammer` logs in. Measured: the
time from the Login to the answer of its first DM (to a blocker every setting loads:
FORBIDDEN), the router's RSS growth from before the login to after it, and the answers to
a DM to a blocker past the bound (the first time: a store read with the bound) and to the
same one again. Python stdlib only (the wire protocol by hand: bench/hostile/wire.py).
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile"))
from wire import Conn, rss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN = 5


def start(binary, data, extra):
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir", data,
         "--shards", "2", "--min-free-disk-bytes", "0"] + extra,
        stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        time.sleep(0.05)
        log.seek(0)
        m = re.search(r"listening on (\S+)", log.read())
        if m:
            return p, m.group(1)
    p.kill()
    log.seek(0)
    sys.exit("the router did not start:\n" + log.read())


def dm(c, to):
    """Sends a DM wanting its result; returns (status, ms)."""
    rid = c.next_rid()
    t0 = time.perf_counter()
    c.send_frame(2, {1: rid, 2: to, 4: b"x", 5: True})
    r = c.wait("send_result", 60)
    return r.get(2, [1])[0], (time.perf_counter() - t0) * 1000


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    work = tempfile.mkdtemp(prefix="bbm-")
    try:
        data = os.path.join(work, "data")
        subprocess.run(
            ["cargo", "run", "--release", "-q", "-p", "ringrouter", "--example",
             "blockers_bench", "--", "--blockers", str(n), "--rounds", "1",
             "--data-dir", data],
            cwd=ROOT, check=True)
        last = "blk%07d" % (n - 1)
        settings = [("all loaded", ["--max-loaded-blockers", str(10 * n)]),
                    ("--max-loaded-blockers 1024", [])]
        res = {name: [] for name, _ in settings}
        for _ in range(rounds):
            for name, extra in settings:
                p, addr = start(binary, data, extra)
                try:
                    time.sleep(0.5)
                    before = rss(p.pid)
                    t0 = time.perf_counter()
                    c = Conn(addr, "spammer")
                    st, _ = dm(c, "blk0000000")
                    login_ms = (time.perf_counter() - t0) * 1000
                    assert st == FORBIDDEN, st
                    grew = rss(p.pid) - before
                    st1, far_ms = dm(c, last)
                    st2, again_ms = dm(c, last)
                    assert st1 == FORBIDDEN and st2 == FORBIDDEN, (st1, st2)
                    res[name].append((login_ms, grew, far_ms, again_ms))
                    c.close()
                finally:
                    p.kill()
                    p.wait()
        print(f"{n} blockers, {rounds} rounds each, medians:")
        for name, rows in res.items():
            med = [statistics.median(col) for col in zip(*rows)]
            print(f"  {name}: login to first answer {med[0]:.1f} ms, RSS +{med[1] / 1024:.1f} MiB; "
                  f"DM to a blocker past the bound {med[2]:.2f} ms, again {med[3]:.2f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


main()

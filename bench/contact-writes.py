"""Bytes the router writes while one user sends N contact requests (or is blocked by N).

    python bench/contact-writes.py ROUTER_BIN N
    python bench/contact-writes.py ROUTER_BIN N block   # N users each block "hub"

Starts ROUTER_BIN on a free port with a fresh data directory, logs N peers in once (so they
exist), then logs in "hub" and sends N contact requests in a loop (each waits for its
answer). Prints the wall time of the loop, the bytes the router wrote (/proc/PID/io wchar
and write_bytes) and its CPU seconds over it. Needs the Python client (`import ringrouter`).
A contact list that is rewritten whole on every change writes O(N^2) bytes here; one whose
entries are keys of their own, O(N). With `block`, each of the N peers blocks "hub" instead
(each block notes the blocker on hub's list, on hub's home shard): a list of blockers
rewritten whole on every block writes O(N^2) bytes, one blocker per key O(N).
"""
import sys
import time

import ringrouter

from routerproc import cpu_seconds, router


def counters(pid):
    v = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, x = line.split(":")
            v[k] = int(x)
    return v["wchar"], v["write_bytes"], cpu_seconds(pid)


def main():
    binary, n = sys.argv[1], int(sys.argv[2])
    blocks = len(sys.argv) > 3 and sys.argv[3] == "block"
    with router(binary) as (proc, addr):
        if not blocks:
            for i in range(n):
                ringrouter.Client(addr, f"peer{i}").close()
        hub = ringrouter.Client(addr, "hub", timeout=30)
        time.sleep(0.5)
        w0, b0, c0 = counters(proc.pid)
        t0 = time.time()
        for i in range(n):
            if blocks:
                # (Its login and logout are in the loop too: the same for any build.)
                p = ringrouter.Client(addr, f"peer{i}", timeout=30)
                p.block("hub")
                p.close()
            else:
                hub.contact_request(f"peer{i}")
        t1 = time.time()
        time.sleep(1.5)  # the last writes reach the store
        w1, b1, c1 = counters(proc.pid)
        what = "blocks" if blocks else "requests"
        print(f"{n} {what}: {t1 - t0:.2f} s, {(w1 - w0) / 1e6:.1f} MB written "
              f"(write_bytes {(b1 - b0) / 1e6:.1f} MB), router CPU {c1 - c0:.2f} s")
        hub.close()


if __name__ == "__main__":
    main()

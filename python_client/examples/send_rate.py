#!/usr/bin/env python3
"""How fast a Python loop can call ``Client.send``.

One client sends N messages of SIZE bytes (default 1,000,000 x 64) to a second
client that receives them with ``recv`` in another process. Prints the rate of the
send loop itself, and the end-to-end rate (first send to last receive).

    python examples/send_rate.py [--addr 127.0.0.1:7878] [--messages 1000000] [--size 64]

Measure against a release build of the router (`cargo build --release -p ringrouter`,
then `target/release/ringrouter`). On a small machine the router, the sender
and the receiver share the cores: say so beside the figure.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

import ringrouter


def receiver(addr: str, user: str, n: int, ready: Any, results: Any) -> None:
    """Child process: receive n messages; report (count, first, last, error)."""
    got = 0
    first = last = 0.0
    error = ""
    try:
        with ringrouter.Client(addr, user) as c:
            ready.set()
            recv = c.recv
            while got < n:
                m = recv(timeout=30.0)
                if m is None:
                    error = "no message for 30 s"
                    break
                if got == 0:
                    first = time.perf_counter()
                got += 1
            last = time.perf_counter()
    except ringrouter.RouterError as e:
        last = time.perf_counter()
        error = f"{e.code}: {e.reason}"
        if e.code in ("CLOSED", "SLOW_CONSUMER"):
            error += (" (the router cuts a receiver that stays behind for too long: is"
                      " this machine busy with something else?)")
    results.put((got, first, last, error))


def main() -> int:
    p = argparse.ArgumentParser(description="Rate of a Python Client.send loop.")
    p.add_argument("--addr", default="127.0.0.1:7878")
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--send-many", action="store_true", help="use send_many instead of a send loop")
    args = p.parse_args()
    n = args.messages
    to = f"rate-rx-{os.getpid()}"

    ctx = mp.get_context("spawn")
    ready, results = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=receiver, args=(args.addr, to, n, ready, results))
    child.start()
    if not ready.wait(30):
        print("error: the receiver did not log in", file=sys.stderr)
        child.kill()
        return 1

    payload = b"x" * args.size
    with ringrouter.Client(args.addr, f"rate-tx-{os.getpid()}") as tx:
        send = tx.send
        t0 = time.perf_counter()
        if args.send_many:
            tx.send_many(to, (payload for _ in range(n)))
        else:
            for _ in range(n):
                send(to, payload)
        t_loop = time.perf_counter()
        tx.flush()
        t_flushed = time.perf_counter()
    got, first, last, error = results.get(timeout=120)
    child.join(10)

    what = "send_many" if args.send_many else "send loop"
    print(f"{what}: {n:,} x {args.size} B in {t_loop - t0:.3f} s = {n / (t_loop - t0):,.0f} msgs/s")
    print(f"written to the socket after {t_flushed - t0:.3f} s = {n / (t_flushed - t0):,.0f} msgs/s")
    if got:
        print(f"received {got:,} in {last - first:.3f} s; end to end (first send to last receive)"
              f" {last - t0:.3f} s = {got / (last - t0):,.0f} msgs/s")
    if got != n:
        print(f"error: received {got:,} of {n:,}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Log in, send N messages to yourself, receive them, and time it.

    python examples/send_to_self.py 100000 [--addr 127.0.0.1:7878] [--size 64]

Prints:

    Execution time for all N messages is X seconds
    Execution time for 1 message is Y seconds

A session receives what its user is sent, so the messages come back on the same
connection. Sending and receiving are interleaved (receive whatever arrived every
1024 sends) so the client never holds more than it must.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import ringrouter


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, help="number of messages")
    p.add_argument("--addr", default="127.0.0.1:7878", help="router address (default %(default)s)")
    p.add_argument("--user", default=f"self-{os.getpid()}", help="user name (default self-PID)")
    p.add_argument("--size", type=int, default=64, help="payload bytes (default %(default)s)")
    args = p.parse_args()
    if args.n < 1:
        p.error("n must be at least 1")

    payload = b"x" * args.size
    with ringrouter.Client(args.addr, args.user) as me:
        received = 0
        start = time.perf_counter()
        for i in range(args.n):
            me.send(args.user, payload)
            if i & 1023 == 1023:
                while me.recv(timeout=0) is not None:
                    received += 1
        while received < args.n:
            if me.recv(timeout=10.0) is None:
                print(f"error: received {received} of {args.n} messages", file=sys.stderr)
                return 1
            received += 1
        elapsed = time.perf_counter() - start

    print(f"Execution time for all {args.n} messages is {elapsed:.6f} seconds")
    print(f"Execution time for 1 message is {elapsed / args.n:.9f} seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Log in, send N messages to yourself, receive them, and time it.

    python examples/send_to_self.py 100000 [--addr 127.0.0.1:7878] [--size 64]

Prints:

    Received N of N messages from USER, in order
    Execution time for all N messages is X seconds
    Execution time for 1 message is Y seconds

A session receives what its user is sent, so the messages come back on the same
connection. Sending and receiving are interleaved (receive whatever arrived every
1024 sends) so the client never holds more than it must. Each payload starts with
its index (8 bytes, big-endian), and every message received is checked: sent by
USER, a direct message, the payload sent, in the order sent (exit status 1 if not).
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
    p.add_argument("--size", type=int, default=64, help="payload bytes, 8 or more (default %(default)s)")
    args = p.parse_args()
    if args.n < 1:
        p.error("n must be at least 1")
    if args.size < 8:
        p.error("size must be at least 8 (the payload carries its index)")

    padding: bytes = b"x" * (args.size - 8)

    def payload(i: int) -> bytes:
        return i.to_bytes(8, "big") + padding

    with ringrouter.Client(args.addr, args.user) as me:
        received = 0

        def check(m: object) -> None:
            """The next message must be message number `received`, from me, to me."""
            ok = (
                isinstance(m, ringrouter.Message)
                and m.sender == me.user
                and m.room is None
                and m.payload == payload(received)
            )
            if not ok:
                raise SystemExit(f"error: message {received} of {args.n} is wrong: {m!r}")

        start = time.perf_counter()
        for i in range(args.n):
            me.send(args.user, payload(i))
            if i & 1023 == 1023:
                while (m := me.recv(timeout=0)) is not None:
                    check(m)
                    received += 1
        while received < args.n:
            m = me.recv(timeout=10.0)
            if m is None:
                print(f"error: received {received} of {args.n} messages", file=sys.stderr)
                return 1
            check(m)
            received += 1
        elapsed = time.perf_counter() - start
        user = me.user

    print(f"Received {received} of {args.n} messages from {user}, in order")
    print(f"Execution time for all {args.n} messages is {elapsed:.6f} seconds")
    print(f"Execution time for 1 message is {elapsed / args.n:.9f} seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run the Rust load engine from Python and print what it measured.

    python examples/load_run.py [--addr 127.0.0.1:7878] [--pairs 16] [--size 64] [--messages 1000000]

The same run from the command line: ``python -m ringrouter.load ...``.
"""

from __future__ import annotations

import argparse
import sys

from ringrouter import load


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default="127.0.0.1:7878")
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--messages", type=int, default=1_000_000)
    args = p.parse_args()

    def progress(elapsed: float, sent: int, delivered: int) -> None:
        print(f"  {elapsed:6.1f} s: {delivered:,} of {sent:,} delivered", file=sys.stderr)

    report = load.run(args.addr, pairs=args.pairs, size=args.size, messages=args.messages,
                      progress=progress)
    print(f"{report.delivered:,} delivered of {report.sent:,}, lost {report.lost},"
          f" out of order {report.out_of_order}")
    print(f"{report.msgs_per_sec:,.0f} msgs/s, {report.mb_per_sec:.2f} MB/s in {report.seconds:.3f} s")
    print(f"latency us: p50 {report.p50_us:.1f}  p90 {report.p90_us:.1f}  p99 {report.p99_us:.1f}"
          f"  p99.9 {report.p999_us:.1f}  max {report.max_us:.1f}")
    return 0 if report.lost == 0 and report.out_of_order == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m ringrouter.load``: run a load against a router and report it.

Prints a progress line while running (on stderr) and a table at the end; with
``--json`` prints exactly one JSON object on stdout instead of the table; with
``--plot out.png`` also draws throughput over time and the latency distribution
(needs matplotlib: ``pip install 'ringrouter[plot]'``).

Exit status: 0, or 1 if any message was lost, 2 on bad arguments or a failed run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, List, Optional, TextIO

from . import LoadReport, run


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: `convert` of the text, refused (argparse names the flag) unless
    it converts and is `ok`, as "must be <what>"."""

    def parse(text: str) -> Any:
        try:
            x = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return x

    return parse


_positive_int = _checked(int, lambda n: n >= 1, "a positive integer")
_non_negative_int = _checked(int, lambda n: n >= 0, "an integer of 0 or more")
# (A finite number more than 0.)
_positive_float = _checked(float, lambda x: 0 < x < float("inf"), "a positive number")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ringrouter.load",
        description="Drive a ringrouter with the Rust load engine: P sender/receiver "
        "pairs (1:1), or one sender fanning out to M receivers.",
    )
    p.add_argument("--addr", default="127.0.0.1:7878",
                   help="router address (default %(default)s; with --transport ws: the HTTP port)")
    p.add_argument("--transport", choices=("tcp", "ws"), default="tcp",
                   help="tcp: the router's TCP port; ws: WebSocket to its HTTP port (default %(default)s)")
    p.add_argument("--tls", action="store_true",
                   help="connect over TLS, verifying the router's certificate (--ca-file or the built-in roots)")
    p.add_argument("--ca-file", default=None, metavar="PEM", help="with --tls: the certificates to trust")
    p.add_argument("--pairs", type=_positive_int, default=16, help="sender/receiver pairs (default %(default)s)")
    p.add_argument("--size", type=_positive_int, default=64, help="payload bytes (default %(default)s)")
    p.add_argument(
        "--messages",
        type=_positive_int,
        default=None,
        help="messages to send in total (default 1000000, or unlimited with --duration)",
    )
    p.add_argument("--duration", type=_positive_float, default=None, metavar="S",
                   help="send for S seconds instead of a message count (--messages is ignored)")
    p.add_argument("--fanout", type=_positive_int, default=None, metavar="M", help="one sender to M receivers")
    p.add_argument("--rate", type=_positive_float, default=None, metavar="R", help="paced total send rate, msgs/s")
    p.add_argument("--window", type=_positive_int, default=None, help="most messages in flight per pair")
    p.add_argument("--threads", type=_non_negative_int, default=None,
                   help="engine threads (default or 0: one per core)")
    p.add_argument("--user-prefix", default=None, metavar="P",
                   help="prefix of the run's user names (default: one per process); fixing it "
                   "fixes which shards the senders and receivers live on")
    p.add_argument("--protocol", choices=("ringrouter", "nats", "redis"), default="ringrouter",
                   help="server protocol: ringrouter, or nats or redis (pub/sub) for side-by-side "
                   "comparisons, over plain TCP (default %(default)s)")
    p.add_argument("--redis-reply", choices=("on", "off"), default="on",
                   help="redis: off makes every sender send CLIENT REPLY OFF first and never read "
                   "a reply (the window then counts deliveries only); on: pipelined PUBLISHes "
                   "whose replies are read in bulk (default %(default)s)")
    p.add_argument("--split-shards", type=_non_negative_int, default=0, metavar="N",
                   help="ringrouter, pairs: the router's shard count; every pair's receiver is "
                   "then named so that it lives on another shard than its sender (default 0: "
                   "names as usual)")
    p.add_argument("--client-seq", action="store_true",
                   help="ringrouter: number the Sends (Send.client_seq), as a resuming client "
                   "does: the router acknowledges them with SendAck (what resume costs)")
    p.add_argument("--server-pid", type=_positive_int, default=None, metavar="PID",
                   help="the router's pid (on this machine): report its CPU over the run (server_cpu_s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--plot", metavar="OUT.png", default=None, help="write a PNG of msgs/s over time and latencies")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def _fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def format_table(r: LoadReport, title: str) -> str:
    """The end-of-run table."""
    rows = [
        ("delivered", f"{_fmt_int(r.delivered)} of {_fmt_int(r.sent)}"
         f"  (lost {_fmt_int(r.lost)}, out of order {_fmt_int(r.out_of_order)})"),
        ("time", f"{r.seconds:.3f} s"),
        ("throughput", f"{_fmt_int(r.msgs_per_sec)} msgs/s   {r.mb_per_sec:.2f} MB/s"),
        ("latency p50", f"{r.p50_us:10.1f} us"),
        ("latency p90", f"{r.p90_us:10.1f} us"),
        ("latency p99", f"{r.p99_us:10.1f} us"),
        ("latency p99.9", f"{r.p999_us:10.1f} us"),
        ("latency max", f"{r.max_us:10.1f} us"),
        (
            "receivers",
            f"{r.receivers}: min {_fmt_int(r.receiver_min_msgs_per_sec)}"
            f"  avg {_fmt_int(r.receiver_avg_msgs_per_sec)}"
            f"  max {_fmt_int(r.receiver_max_msgs_per_sec)} msgs/s",
        ),
        (
            "engine CPU",
            f"{r.engine_cpu_seconds:.2f} s (router and engine share this machine's cores)",
        ),
    ]
    if r.server_cpu_s is not None:
        rows.append(("server CPU", f"{r.server_cpu_s:.2f} s over the measured phase"))
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


class _Progress:
    """Writes one progress line, redrawn in place on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = (0.0, 0)
        self.drawn = False

    def __call__(self, elapsed: float, sent: int, delivered: int) -> None:
        t0, d0 = self.last
        rate = (delivered - d0) / (elapsed - t0) if elapsed > t0 else 0.0
        self.last = (elapsed, delivered)
        line = (
            f"[{elapsed:7.1f} s] sent {_fmt_int(sent):>13}  delivered {_fmt_int(delivered):>13}"
            f"  {_fmt_int(rate):>11} msgs/s"
        )
        if self.tty:
            self.out.write("\r" + line)
            self.drawn = True
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the CLI; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.ca_file is not None and not args.tls:
        parser.error("--ca-file needs --tls")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "error: --plot needs matplotlib, which is not installed; "
                "install it with: pip install 'ringrouter[plot]'",
                file=sys.stderr,
            )
            return 2
    messages = args.messages
    if messages is None and args.duration is None:
        messages = 1_000_000
    show_progress = not args.quiet and (not args.json or sys.stderr.isatty())
    progress = _Progress(sys.stderr) if show_progress else None
    try:
        report = run(
            args.addr,
            pairs=args.pairs,
            size=args.size,
            messages=messages,
            fanout=args.fanout,
            duration=args.duration,
            rate=args.rate,
            window=args.window,
            threads=args.threads,
            progress=progress,
            transport=args.transport,
            tls=args.tls,
            ca_file=args.ca_file,
            server_pid=args.server_pid,
            user_prefix=args.user_prefix,
            protocol=args.protocol,
            redis_reply=args.redis_reply,
            split_shards=args.split_shards,
            client_seq=args.client_seq,
        )
    except (ValueError, OverflowError, ConnectionError, RuntimeError) as e:
        if progress is not None:
            progress.done()
        # A run that failed while measuring still reports what it measured (its
        # ``lost``, and the ``error``), as ``ringrouter-load --json`` does.
        failed = getattr(e, "report", None)
        if failed is not None and args.json:
            print(failed.to_json())
        print(f"error: {e}", file=sys.stderr)
        return 2
    if progress is not None:
        progress.done()
    if args.server_pid is not None and report.server_cpu_s is None:
        print(
            "warning: cannot read the CPU of --server-pid (no such process on this machine?)",
            file=sys.stderr,
        )
    if args.json:
        print(report.to_json())
    else:
        shape = (
            f"1 sender -> {args.fanout} receivers" if args.fanout else f"{args.pairs} pairs"
        )
        amount = f"{args.duration:g} s" if args.duration is not None else f"{_fmt_int(messages or 0)} messages"
        over = "" if args.transport == "tcp" and not args.tls else f" over {args.transport}{'+tls' if args.tls else ''}"
        print(format_table(report, f"{args.protocol} load @ {args.addr}{over}: {shape}, {args.size}-byte payloads, {amount}"))
    if args.plot is not None:
        from .plot import plot_report

        plot_report(report, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    if report.lost:
        print(f"error: {report.lost} messages lost", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

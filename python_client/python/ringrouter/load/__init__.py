"""Load runs against a ringrouter, driven by the Rust load engine.

The engine (crate ``ringrouter-client``, module ``load``) is the same one the
``ringrouter-load`` binary and ``cargo bench`` use, so the figures agree. It runs
on its own threads with the GIL released; Python only starts it and reads the
report.

Two shapes of load:

- ``pairs`` sender/receiver pairs, each sender sending to its own receiver (1:1);
- ``fanout=M``: one sender, each message delivered to ``M`` receivers (for M > 1
  through a real room: the sender creates it, the receivers join it, the sender
  sends each message once to the room; the room is deleted at the end).

Example::

    from ringrouter import load

    report = load.run("127.0.0.1:7878", pairs=16, size=64, messages=1_000_000)
    print(f"{report.msgs_per_sec:,.0f} msgs/s, p99 {report.p99_us:.0f} us, lost {report.lost}")

From the command line: ``python -m ringrouter.load --help``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from .._native import load_run as _load_run

__all__ = ["LoadReport", "ProgressCallback", "run"]

#: ``progress(elapsed_seconds, sent, delivered)``, called while a run lasts.
ProgressCallback = Callable[[float, int, int], None]

# The two fields whose JSON value is a list of [x, y] pairs (tuples in Python).
_PAIR_LISTS = ("timeline", "latency_buckets")


@dataclass(frozen=True, repr=False)
class LoadReport:
    """What a load run measured (immutable).

    The fields are the engine's report, with the engine's names (the keys of
    :meth:`to_json` and of ``python -m ringrouter.load --json``). ``sent`` and
    ``delivered`` count deliveries (messages x recipients). Latencies are one-way,
    sender to receiver, in microseconds.

    Build one with :meth:`from_json` or :meth:`from_dict`; :func:`run` returns one.
    A run that lost nothing has ``lost == 0`` and ``out_of_order == 0``.
    """

    sent: int
    """Deliveries expected (messages sent x recipients)."""
    delivered: int
    """Deliveries received."""
    lost: int
    """``sent - delivered``: must be 0."""
    out_of_order: int
    """Deliveries received out of order or twice: must be 0."""
    seconds: float
    """Wall time from the first send to the last delivery."""
    msgs_per_sec: float
    """Delivered messages per second."""
    mb_per_sec: float
    """Delivered payload megabytes (10^6 bytes) per second."""
    p50_us: float
    """Median latency, microseconds."""
    p90_us: float
    """90th percentile latency."""
    p99_us: float
    """99th percentile latency."""
    p999_us: float
    """99.9th percentile latency."""
    max_us: float
    """Largest latency."""
    receivers: int
    """Receiving sessions."""
    receiver_min_msgs_per_sec: float
    """Slowest receiver, msgs/s."""
    receiver_avg_msgs_per_sec: float
    """Mean over receivers, msgs/s."""
    receiver_max_msgs_per_sec: float
    """Fastest receiver, msgs/s."""
    engine_cpu_seconds: float
    """CPU time (user + system) the engine's process used during the run."""
    client_cpu_s: float
    """The same figure under the name ``bench/compare.sh`` uses beside ``server_cpu_s``."""
    timeline: List[Tuple[float, int]] = field(hash=False)
    """``(seconds since start, deliveries so far)``, sampled every 100 ms."""
    latency_buckets: List[Tuple[float, int]] = field(hash=False)
    """``(latency upper bound in microseconds, count)`` buckets of the latency histogram."""
    server_cpu_s: Optional[float] = None
    """With ``server_pid``: the server process's CPU seconds (user + system, all its
    threads) over the same span as ``client_cpu_s`` (logins and room joins left out);
    ``None`` otherwise."""
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Fields of the engine's report that this class does not name (empty when the
    package and its engine agree); kept so that :meth:`to_json` gives back every
    field, and readable as attributes too."""

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        """The report's field names, in the engine's order (``extra`` excluded)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> "LoadReport":
        """Builds a report from the engine's JSON object, parsed (see :meth:`from_json`).

        Raises:
            ValueError: a field of the report is missing.
        """
        names = cls.field_names()
        # Fields with a default (added later, such as ``server_cpu_s``) may be absent.
        optional = {
            f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
        }
        missing = [n for n in names if n not in fields and n not in optional]
        if missing:
            raise ValueError(f"a load report needs the fields {', '.join(missing)}")
        known: Dict[str, Any] = {}
        for name in names:
            if name not in fields:
                continue
            value = fields[name]
            if name in _PAIR_LISTS and isinstance(value, list):
                value = [tuple(v) for v in value]
            known[name] = value
        extra = {k: v for k, v in fields.items() if k not in known}
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, text: str) -> "LoadReport":
        """Parses the engine's JSON report.

        Raises:
            ValueError: not a JSON object, or a field of the report is missing.
        """
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("a load report is a JSON object")
        return cls.from_dict(fields)

    def to_dict(self) -> Dict[str, Any]:
        """Every field, with the engine's names, as plain Python values (the
        ``(x, y)`` tuples become lists, as in JSON)."""
        out: Dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if name in _PAIR_LISTS:
                value = [list(v) for v in value]
            out[name] = value
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        """The report as one JSON object, with the engine's field names."""
        return json.dumps(self.to_dict())

    if not TYPE_CHECKING:
        # Not seen by type checkers, so that a misspelt field is still an error there.
        def __getattr__(self, name: str) -> Any:
            # Only called for names that are not fields: an engine field this class
            # does not know yet.
            extra = self.__dict__.get("extra")
            if extra is not None and name in extra:
                return extra[name]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return (
            f"LoadReport(delivered={self.delivered}, sent={self.sent}, lost={self.lost}, "
            f"out_of_order={self.out_of_order}, "
            f"seconds={self.seconds:.3f}, msgs_per_sec={self.msgs_per_sec:.0f}, "
            f"mb_per_sec={self.mb_per_sec:.2f}, p50_us={self.p50_us:.1f}, "
            f"p99_us={self.p99_us:.1f}, p999_us={self.p999_us:.1f}, max_us={self.max_us:.1f})"
        )


def run(
    addr: str,
    *,
    pairs: int = 16,
    size: int = 64,
    messages: Optional[int] = 1_000_000,
    fanout: Optional[int] = None,
    duration: Optional[float] = None,
    rate: Optional[float] = None,
    window: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    progress_every: float = 1.0,
    transport: str = "tcp",
    tls: bool = False,
    ca_file: Optional[Union[str, "PathLike[str]"]] = None,
    server_pid: Optional[int] = None,
    user_prefix: Optional[str] = None,
    protocol: str = "ringrouter",
    redis_reply: str = "on",
    split_shards: int = 0,
    client_seq: bool = False,
) -> LoadReport:
    """Runs a load against the router at ``addr`` and returns what it measured.

    Args:
        addr: router address, ``"host:port"``.
        pairs: sender/receiver pairs (ignored with ``fanout``).
        size: payload bytes per message, at least 16 (each carries its send time and number).
        messages: messages to send in total (with ``fanout``: sent by the one sender).
        fanout: one sender to this many receivers, instead of pairs.
        duration: send for this many seconds instead of a number of messages
            (``messages`` is then ignored).
        rate: paced total send rate, messages per second (``None``: as fast as the
            in-flight window allows).
        window: most messages in flight per pair (engine default if ``None``).
        threads: engine threads (``None`` or 0: one per core).
        progress: called as ``progress(elapsed_seconds, sent, delivered)`` every
            ``progress_every`` seconds while the run lasts. An exception it raises
            (``KeyboardInterrupt`` too) is re-raised when the run ends.
        progress_every: seconds between progress calls.
        transport: ``"tcp"`` (the router's TCP port), or ``"ws"``: every session
            over WebSocket (subprotocol ``ringrouter.v1``) to the router's HTTP port,
            which ``addr`` then names.
        tls: connect over TLS (``wss`` with ``transport="ws"``), verifying the
            router's certificate against ``ca_file`` or the built-in roots.
        ca_file: PEM file of the certificates to trust (with ``tls``).
        server_pid: the router's process id, when it runs on this machine: the report's
            ``server_cpu_s`` is then its CPU over the measured span.
        user_prefix: prefix of the run's user names (senders ``<prefix>s<i>``,
            receivers ``<prefix>r<i>-<j>``; ``None``: one per process). Users live on
            the shard their name picks, so fixing it fixes which pairs cross shards:
            runs compare like for like.
        protocol: the server's protocol: ``"ringrouter"``, or ``"nats"`` (a
            nats-server) or ``"redis"`` (redis pub/sub) for side-by-side
            comparisons; those two over plain TCP only (``transport="tcp"``, no
            ``tls``).
        redis_reply: with ``protocol="redis"``: ``"on"``, pipelined PUBLISHes whose
            replies are read in bulk; ``"off"``, every sender sends ``CLIENT REPLY
            OFF`` first and reads no reply (the window then counts deliveries only).
        split_shards: ringrouter, pairs: the router's shard count; every pair's
            receiver is then named so that it lives on another shard than its
            sender (0 or 1: names as usual).
        client_seq: ringrouter: number the Sends (``Send.client_seq``), as a
            resuming client does, so that the router acknowledges them with SendAck
            (what resume costs).

    ``protocol``, ``redis_reply``, ``split_shards`` and ``client_seq`` are
    ``ringrouter-load``'s ``--protocol``, ``--redis-reply``, ``--split-shards`` and
    ``--client-seq``.

    Raises:
        ValueError: an invalid combination of arguments, a ``protocol`` or
            ``redis_reply`` not among those above, a negative ``split_shards``.
        ConnectionError: the engine could not connect or log in.
        RuntimeError: the engine failed while running. When it failed once sending
            had begun (a connection the router ended, say), its ``report`` attribute
            is the :class:`LoadReport` up to then: ``lost`` counts what was sent and
            not delivered, ``report.error`` says why.
    """
    try:
        report = _load_run(
            addr,
            pairs=pairs,
            size=size,
            messages=None if duration is not None else messages,
            duration=duration,
            fanout=fanout,
            rate=rate,
            window=window,
            threads=threads,
            progress=progress,
            every=progress_every,
            transport=transport,
            tls=tls,
            ca_file=ca_file,
            server_pid=server_pid,
            user_prefix=user_prefix,
            protocol=protocol,
            redis_reply=redis_reply,
            split_shards=split_shards,
            client_seq=client_seq,
        )
    except RuntimeError as e:
        if len(e.args) == 2 and isinstance(e.args[1], str):
            failed = RuntimeError(e.args[0])
            failed.report = LoadReport.from_json(e.args[1])  # type: ignore[attr-defined]
            raise failed from None
        raise
    return LoadReport.from_json(report)

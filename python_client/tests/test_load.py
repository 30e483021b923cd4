"""The load driver (Rust engine), its CLI, and the examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ringrouter
from ringrouter import load
from conftest import PYTHON_CLIENT, Router, run_python

# The report's fields, in order: the keys of `python -m ringrouter.load --json` and
# the fields of load.LoadReport (a contract: scripts read them).
FIELDS = [
    "sent", "delivered", "lost", "out_of_order", "seconds", "msgs_per_sec", "mb_per_sec",
    "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
    "receivers", "receiver_min_msgs_per_sec", "receiver_avg_msgs_per_sec",
    "receiver_max_msgs_per_sec", "engine_cpu_seconds", "client_cpu_s", "timeline", "latency_buckets",
    "server_cpu_s",
]


def assert_exact(report: load.LoadReport, sent: int, receivers: int) -> None:
    """Every delivery arrived, once, in order, and the report says so consistently."""
    assert (report.sent, report.delivered, report.lost, report.out_of_order) == (
        sent, sent, 0, 0,
    ), report
    assert report.receivers == receivers, report
    assert report.extra == {}, "the engine reports fields LoadReport does not name"
    # The timeline counts deliveries so far: never down, never past the total.
    counts = [n for _, n in report.timeline]
    assert counts == sorted(counts) and all(0 <= n <= sent for n in counts), report.timeline


def test_small_load_run_loses_nothing(router: Router) -> None:
    calls = []
    report = load.run(
        router.addr, pairs=4, size=64, messages=20_000,
        progress=lambda t, s, d: calls.append((t, s, d)), progress_every=0.05,
    )
    assert isinstance(report, load.LoadReport)
    assert_exact(report, sent=20_000, receivers=4)
    assert report.seconds > 0
    assert report.msgs_per_sec > 0
    assert report.mb_per_sec > 0
    assert 0 < report.p50_us <= report.p90_us <= report.p99_us <= report.p999_us <= report.max_us
    assert isinstance(report.timeline, list)
    assert all(isinstance(x, tuple) and len(x) == 2 for x in report.timeline)
    assert isinstance(report.latency_buckets, list)
    # Every delivery carried a timestamp (size >= 16): the histogram counts them all.
    assert sum(c for _, c in report.latency_buckets) == 20_000
    d = json.loads(report.to_json())
    assert list(d) == FIELDS
    assert load.LoadReport.from_json(report.to_json()) == report
    for t, s, dl in calls:
        assert t >= 0 and s >= dl >= 0


def test_server_cpu_is_read_over_the_measured_span_with_server_pid(router: Router) -> None:
    report = load.run(router.addr, pairs=2, size=64, messages=200_000, server_pid=router.proc.pid)
    assert_exact(report, sent=200_000, receivers=2)
    # The router did the routing: it used some CPU, and no more than its two shards
    # and its storage thread could in the run's wall time.
    assert report.server_cpu_s is not None
    assert 0 < report.server_cpu_s <= 4 * report.seconds + 0.05, report
    assert load.run(router.addr, pairs=1, size=64, messages=100).server_cpu_s is None
    # A pid that names no process: no reading rather than a wrong one.
    assert load.run(router.addr, pairs=1, size=64, messages=100, server_pid=2**31 - 1).server_cpu_s is None


def test_progress_is_called_while_a_run_lasts(router: Router) -> None:
    calls = []
    t0 = time.monotonic()
    report = load.run(
        router.addr, pairs=1, size=64, duration=1.0, rate=2_000,
        progress=lambda t, s, d: calls.append((t, s, d)), progress_every=0.1,
    )
    took = time.monotonic() - t0
    assert report.lost == 0 and report.out_of_order == 0, report
    # About one call per 0.1 s of the run (it lasted `took` s, 1.0 of them sending).
    assert 5 <= len(calls) <= took / 0.1 + 1, (took, calls)
    times = [t for t, _, _ in calls]
    assert times == sorted(times) and times[0] >= 0, calls
    for (_, s0, d0), (_, s1, d1) in zip(calls, calls[1:]):
        assert s1 >= s0 and d1 >= d0, calls
    assert all(s >= d >= 0 for _, s, d in calls), calls
    assert calls[-1][1] <= report.sent


def test_fanout_load_run(router: Router) -> None:
    report = load.run(router.addr, fanout=4, size=32, messages=2_000)
    assert_exact(report, sent=8_000, receivers=4)


def test_user_prefix_names_the_runs_users(router: Router) -> None:
    # A device of the run's first receiver, logged in before it, gets that user's copies
    # from the run's first sender: the names are the prefix's.
    prefix = f"pfx{time.monotonic_ns()}-"
    with ringrouter.Client(router.addr, f"{prefix}r0-0") as device:
        report = load.run(router.addr, pairs=1, size=64, messages=50, user_prefix=prefix)
        assert_exact(report, 50, 1)
        m = device.recv(timeout=5.0)
        assert isinstance(m, ringrouter.Message), m
        assert m.sender == f"{prefix}s0"
    p = run_python(
        "-m", "ringrouter.load", "--addr", router.addr, "--pairs", "1", "--messages", "10",
        "--user-prefix", prefix, "--json",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["lost"] == 0


def test_load_run_bad_arguments(router: Router) -> None:
    with pytest.raises(ValueError):
        load.run(router.addr, size=0, messages=10)
    # A payload too short to carry its send time and number is refused, not measured as
    # 0 µs of latency.
    with pytest.raises(ValueError, match="at least 16 bytes"):
        load.run(router.addr, size=15, messages=10)


def test_cli_takes_ringrouter_loads_protocol_and_shard_flags() -> None:
    """``python -m ringrouter.load`` takes ringrouter-load's --protocol, --redis-reply,
    --split-shards and --client-seq, with its defaults."""
    from ringrouter.load.__main__ import _parser

    a = _parser().parse_args([])
    assert (a.protocol, a.redis_reply, a.split_shards, a.client_seq) == ("ringrouter", "on", 0, False)
    a = _parser().parse_args([
        "--protocol", "redis", "--redis-reply", "off", "--split-shards", "2", "--client-seq",
    ])
    assert (a.protocol, a.redis_reply, a.split_shards, a.client_seq) == ("redis", "off", 2, True)
    assert _parser().parse_args(["--protocol", "nats"]).protocol == "nats"
    help_text = _parser().format_help()
    for flag in ("--protocol", "--redis-reply", "--split-shards", "--client-seq"):
        assert flag in help_text, flag


@pytest.mark.parametrize(
    "args, says",
    [
        (["--protocol", "xmpp"], "--protocol: invalid choice"),
        (["--redis-reply", "maybe"], "--redis-reply: invalid choice"),
        (["--split-shards", "-1"], "--split-shards: must be an integer of 0 or more"),
        (["--split-shards", "two"], "--split-shards: must be an integer of 0 or more"),
        (["--client-seq", "yes"], "unrecognized arguments: yes"),
    ],
)
def test_cli_refuses_bad_protocol_and_shard_flags(args: list, says: str) -> None:
    # Refused before connecting anywhere (the address is not even listened on).
    p = run_python("-m", "ringrouter.load", "--addr", "127.0.0.1:1", *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert says in p.stderr, p.stderr
    assert p.stdout == ""


def test_load_run_refuses_bad_protocol_and_shard_arguments() -> None:
    # Checked before connecting: nothing listens at this address.
    addr = "127.0.0.1:1"
    with pytest.raises(ValueError, match="protocol must be 'ringrouter', 'nats' or 'redis'"):
        load.run(addr, pairs=1, messages=10, protocol="xmpp")
    with pytest.raises(ValueError, match="redis_reply must be 'on' or 'off'"):
        load.run(addr, pairs=1, messages=10, protocol="redis", redis_reply="maybe")
    with pytest.raises(ValueError, match="split_shards must be 0 or more"):
        load.run(addr, pairs=1, messages=10, split_shards=-1)
    # NATS and Redis are plain TCP only, as for ringrouter-load.
    with pytest.raises(ValueError, match="ringrouter only"):
        load.run(addr, pairs=1, messages=10, protocol="nats", transport="ws")
    with pytest.raises(ValueError):
        ringrouter._native.load_run(
            addr, pairs=1, size=64, messages=10, duration=None, fanout=None, rate=None,
            protocol="NATS",
        )


def test_split_shards_and_client_seq_runs_deliver_everything(own_router) -> None:
    """--split-shards (each pair's receiver on another shard than its sender) and
    --client-seq (numbered Sends, acknowledged with SendAck): every message arrives,
    once, in order, through load.run and through the CLI."""
    r = own_router("--shards", "2")
    assert r.shards == 2
    for kw in ({"split_shards": 2}, {"client_seq": True}, {"split_shards": 2, "client_seq": True}):
        report = load.run(r.addr, pairs=4, size=64, messages=20_000, **kw)
        assert_exact(report, sent=20_000, receivers=4)
    for flags in (["--split-shards", "2"], ["--client-seq"], ["--split-shards", "2", "--client-seq"]):
        p = run_python(
            "-m", "ringrouter.load", "--addr", r.addr, "--pairs", "4", "--messages", "10000",
            "--json", *flags,
        )
        assert p.returncode == 0, (flags, p.stderr)
        d = json.loads(p.stdout)
        assert (d["sent"], d["delivered"], d["lost"], d["out_of_order"]) == (10_000, 10_000, 0, 0), flags
        assert d["receivers"] == 4


def test_load_run_unreachable_router(closed_port_addr: str) -> None:
    with pytest.raises(ConnectionError):
        load.run(closed_port_addr, pairs=1, messages=10)


def test_a_run_whose_receiver_the_router_cuts_fails_at_once_with_the_reason(own_router) -> None:
    # The router cuts a receiver past 1 000 unacked deliveries; the load acks every 1 024
    # and its window is 16 000, so the cut comes early and the sender would wait for
    # window room that nothing frees. (Before: the run sat there until the stall
    # watchdog, 40 s, and once not even then.)
    r = own_router("--max-unacked-per-session", "1000")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="slow consumer"):
        load.run(r.addr, pairs=1, size=1024, messages=200_000, window=16_000)
    assert time.monotonic() - t0 < 10


def test_cli_json(router: Router) -> None:
    p = run_python(
        "-m", "ringrouter.load", "--addr", router.addr, "--pairs", "2", "--size", "64",
        "--messages", "10000", "--json",
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)  # exactly one JSON object
    assert isinstance(d, dict)
    assert list(d) == FIELDS
    assert (d["sent"], d["delivered"], d["lost"], d["out_of_order"]) == (10_000, 10_000, 0, 0)
    assert d["receivers"] == 2


def test_cli_table_and_progress(router: Router) -> None:
    p = run_python(
        "-m", "ringrouter.load", "--addr", router.addr, "--pairs", "2", "--size", "32",
        "--duration", "1.5",
    )
    assert p.returncode == 0, p.stderr
    assert "msgs/s" in p.stdout
    assert re.search(r"latency p99\s+[\d.]+ us", p.stdout), p.stdout
    assert re.search(r"\(lost 0, out of order 0\)", p.stdout), p.stdout
    assert re.search(r"^receivers\s+2:", p.stdout, re.M), p.stdout
    assert re.search(r"\[\s*[\d.]+ s\] sent", p.stderr), p.stderr  # progress lines


def test_cli_plot(router: Router, tmp_path: Path) -> None:
    out = tmp_path / "load.png"
    args = ["-m", "ringrouter.load", "--addr", router.addr, "--pairs", "2",
            "--messages", "5000", "--plot", str(out)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        p = run_python(*args)
        assert p.returncode == 2
        assert "matplotlib" in p.stderr and "ringrouter[plot]" in p.stderr
        return
    p = run_python(*args)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_send_to_self_example(router: Router) -> None:
    n = 2000
    me = f"self-{time.monotonic_ns()}"
    p = run_python(
        str(PYTHON_CLIENT / "examples" / "send_to_self.py"), str(n), "--addr", router.addr,
        "--user", me,
    )
    assert p.returncode == 0, p.stderr
    # The example checks each of the n messages (sender, payload index, order) and
    # only then prints this line.
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 3, p.stdout
    assert lines[0] == f"Received {n} of {n} messages from {me}, in order"
    m1 = re.fullmatch(rf"Execution time for all {n} messages is (\d+\.\d{{6}}) seconds", lines[1])
    m2 = re.fullmatch(r"Execution time for 1 message is (\d+\.\d{9}) seconds", lines[2])
    assert m1 and m2, p.stdout
    assert float(m1.group(1)) > 0


def test_send_to_self_example_detects_a_wrong_message(router: Router, connect) -> None:
    """The example's check is real: a message it did not send makes it fail."""
    me = f"self-{time.monotonic_ns()}"
    intruder = connect(f"intruder-{time.monotonic_ns()}")
    proc = subprocess.Popen(
        [sys.executable, str(PYTHON_CLIENT / "examples" / "send_to_self.py"), "200000",
         "--addr", router.addr, "--user", me],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Once the example is logged in, slip it a message of someone else's.
        deadline = time.monotonic() + 30
        while True:
            try:
                intruder.send(me, b"not yours", wait=True)
                break
            except ringrouter.RouterError as e:
                assert e.status == ringrouter.Status.NOT_FOUND, e  # not logged in yet
                assert time.monotonic() < deadline, "the example never logged in"
                time.sleep(0.02)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, (out, err)
    assert "is wrong" in err and "not yours" in err, err
    assert "Received" not in out, out


def test_chat_example(router: Router) -> None:
    p = run_python(str(PYTHON_CLIENT / "examples" / "chat.py"), "--addr", router.addr)
    assert p.returncode == 0, p.stderr
    assert "bob got from alice: hi bob" in p.stdout, p.stdout


def test_load_run_example(router: Router) -> None:
    p = run_python(str(PYTHON_CLIENT / "examples" / "load_run.py"), "--addr", router.addr,
                   "--messages", "5000", "--pairs", "2")
    assert p.returncode == 0, p.stderr
    assert "delivered of 5,000, lost 0, out of order 0" in p.stdout, p.stdout


def test_package_is_typed() -> None:
    pkg = Path(ringrouter.__file__).parent
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_native.pyi").is_file()


def test_a_run_cut_by_the_router_reports_what_it_lost(own_router) -> None:
    """A router killed mid-run: the run raises, and its ``report`` counts what was sent
    and not delivered (``lost``) and says why (``error``)."""
    import threading

    r = own_router()
    threading.Timer(1.0, r.proc.kill).start()
    with pytest.raises(RuntimeError) as e:
        load.run(r.addr, pairs=2, size=64, duration=5, window=64)
    report = e.value.report  # type: ignore[attr-defined]
    assert report.error, report
    assert report.sent > 0 and report.lost == report.sent - report.delivered, report
    assert report.lost > 0, report

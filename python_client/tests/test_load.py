"""The load driver (Rust engine), its CLI, and the examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ringrouter
from ringrouter import load
from conftest import PYTHON_CLIENT, Router, run_python

FIELDS = [
    "sent", "delivered", "lost", "seconds", "msgs_per_sec", "mb_per_sec",
    "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
]


def test_small_load_run_loses_nothing(router: Router) -> None:
    calls = []
    report = load.run(
        router.addr, pairs=4, size=64, messages=20_000,
        progress=lambda t, s, d: calls.append((t, s, d)), progress_every=0.05,
    )
    assert isinstance(report, load.LoadReport)
    assert report.lost == 0, report
    assert report.sent == 20_000
    assert report.delivered == 20_000
    assert report.seconds > 0
    assert report.msgs_per_sec > 0
    assert report.mb_per_sec > 0
    assert 0 < report.p50_us <= report.p90_us <= report.p99_us <= report.p999_us <= report.max_us
    assert isinstance(report.timeline, list)
    assert all(isinstance(x, tuple) and len(x) == 2 for x in report.timeline)
    assert isinstance(report.latency_buckets, list)
    assert sum(c for _, c in report.latency_buckets) > 0
    d = json.loads(report.to_json())
    for f in FIELDS:
        assert f in d
    for t, s, dl in calls:
        assert t >= 0 and s >= dl >= 0


def test_fanout_load_run(router: Router) -> None:
    report = load.run(router.addr, fanout=4, size=32, messages=2_000)
    assert report.lost == 0, report
    assert report.sent == 8_000
    assert report.delivered == 8_000


def test_load_run_bad_arguments(router: Router) -> None:
    with pytest.raises(ValueError):
        load.run(router.addr, size=0, messages=10)


def test_load_run_unreachable_router(closed_port_addr: str) -> None:
    with pytest.raises(ConnectionError):
        load.run(closed_port_addr, pairs=1, messages=10)


def test_cli_json(router: Router) -> None:
    p = run_python(
        "-m", "ringrouter.load", "--addr", router.addr, "--pairs", "2", "--size", "64",
        "--messages", "10000", "--json",
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)  # exactly one JSON object
    assert isinstance(d, dict)
    for f in FIELDS:
        assert f in d, f
    assert d["lost"] == 0
    assert d["sent"] == d["delivered"] == 10_000


def test_cli_table_and_progress(router: Router) -> None:
    p = run_python(
        "-m", "ringrouter.load", "--addr", router.addr, "--pairs", "2", "--size", "32",
        "--duration", "1.5",
    )
    assert p.returncode == 0, p.stderr
    assert "msgs/s" in p.stdout
    assert re.search(r"latency p99\s+[\d.]+ us", p.stdout), p.stdout
    assert re.search(r"lost 0\b", p.stdout), p.stdout
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
    p = run_python(str(PYTHON_CLIENT / "examples" / "send_to_self.py"), str(n), "--addr", router.addr)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    m1 = re.fullmatch(rf"Execution time for all {n} messages is ([\d.e-]+) seconds", lines[-2])
    m2 = re.fullmatch(r"Execution time for 1 message is ([\d.e-]+) seconds", lines[-1])
    assert m1 and m2, p.stdout
    assert float(m1.group(1)) > 0
    assert float(m2.group(1)) == pytest.approx(float(m1.group(1)) / n, rel=0.01)


def test_chat_example(router: Router) -> None:
    p = run_python(str(PYTHON_CLIENT / "examples" / "chat.py"), "--addr", router.addr)
    assert p.returncode == 0, p.stderr
    assert "bob got from alice: hi bob" in p.stdout, p.stdout


def test_load_run_example(router: Router) -> None:
    p = run_python(str(PYTHON_CLIENT / "examples" / "load_run.py"), "--addr", router.addr,
                   "--messages", "5000", "--pairs", "2")
    assert p.returncode == 0, p.stderr
    assert "lost 0" in p.stdout, p.stdout


def test_package_is_typed() -> None:
    pkg = Path(ringrouter.__file__).parent
    assert (pkg / "py.typed").is_file()
    assert (pkg / "_native.pyi").is_file()

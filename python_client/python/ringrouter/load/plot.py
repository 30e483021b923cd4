"""Charts of a load report (needs matplotlib: ``pip install 'ringrouter[plot]'``)."""

from __future__ import annotations

from typing import List, Tuple

from . import LoadReport

__all__ = ["plot_report", "throughput_series"]


def throughput_series(timeline: List[Tuple[float, int]]) -> Tuple[List[float], List[float]]:
    """Turns ``(seconds, deliveries so far)`` samples into ``(times, msgs/s)``."""
    times: List[float] = []
    rates: List[float] = []
    prev_t, prev_n = 0.0, 0
    for t, n in timeline:
        if t > prev_t:
            times.append(t)
            rates.append((n - prev_n) / (t - prev_t))
        prev_t, prev_n = t, n
    return times, rates


def plot_report(report: LoadReport, path: str) -> None:
    """Writes a PNG to ``path``: delivered msgs/s over time, and the latency distribution.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib: pip install 'ringrouter[plot]'"
        ) from e

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 8))
    thousands = FuncFormatter(lambda v, _pos: f"{v:,.0f}")
    ax1.yaxis.set_major_formatter(thousands)
    ax2.yaxis.set_major_formatter(thousands)

    times, rates = throughput_series(list(getattr(report, "timeline", [])))
    ax1.plot(times, rates, color="tab:blue", marker=".", linewidth=1)
    ax1.axhline(report.msgs_per_sec, color="tab:gray", linestyle="--", linewidth=1,
                label=f"mean {report.msgs_per_sec:,.0f} msgs/s")
    ax1.set_title("Delivered messages per second")
    ax1.set_xlabel("seconds since start")
    ax1.set_ylabel("msgs/s")
    ax1.set_ylim(bottom=0)
    ax1.grid(True, alpha=0.3)
    ax1.legend(loc="lower right")

    buckets = [(float(b), int(c)) for b, c in getattr(report, "latency_buckets", []) if c > 0]
    if buckets:
        bounds = [b for b, _ in buckets]
        counts = [c for _, c in buckets]
        # A bucket (upper bound b_i, count c_i) covers (b_{i-1}, b_i]: a "pre" step.
        ax2.step(bounds, counts, where="pre", color="tab:orange")
        ax2.fill_between(bounds, counts, step="pre", alpha=0.3, color="tab:orange")
        if min(bounds) > 0:
            ax2.set_xscale("log")
    for name, value, style in (
        ("p50", report.p50_us, ":"),
        ("p99", report.p99_us, "--"),
        ("p99.9", report.p999_us, "-."),
    ):
        if value > 0:
            ax2.axvline(value, color="tab:red", linestyle=style, linewidth=1,
                        label=f"{name} {value:,.0f} us")
    ax2.set_title("One-way latency distribution")
    ax2.set_xlabel("latency (us)")
    ax2.set_ylabel("messages")
    ax2.grid(True, alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(loc="upper right")

    fig.suptitle(
        f"ringrouter load: {report.delivered:,} delivered, lost {report.lost}, "
        f"{report.msgs_per_sec:,.0f} msgs/s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

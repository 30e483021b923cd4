#!/usr/bin/env python3
"""Plots a soak run's samples.csv (written by ringrouter-soak) into a PNG.

    python scripts/soak_plot.py target/soak/samples.csv target/soak/soak.png

Top: the router's RSS (MiB; dotted: its anonymous part) and open fds over time. Bottom: messages sent and
deliveries received per second by the well-behaved clients between samples.
The end of the traffic phase is marked.
"""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"{src}: no samples", file=sys.stderr)
        return 1
    t = [float(r["time_s"]) for r in rows]
    rss = [int(r["rss_kib"]) / 1024 for r in rows]
    anon = [int(r["rss_anon_kib"]) / 1024 for r in rows] if "rss_anon_kib" in rows[0] else None
    fds = [int(r["fds"]) for r in rows]
    sent = [int(r["sent"]) for r in rows]
    delivered = [int(r["delivered"]) for r in rows]
    load_end = next((float(r["time_s"]) for r in rows if r["phase"] == "load-end"), None)

    fig, (ax1, ax3) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax1.plot(t, rss, color="tab:blue", marker=".", label="RSS")
    if anon is not None:
        ax1.plot(t, anon, color="tab:blue", linestyle=":", label="of which anonymous")
        ax1.legend(loc="upper left")
    ax1.set_ylabel("router RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(t, fds, color="tab:orange", marker=".", label="open fds")
    ax2.set_ylabel("router open fds", color="tab:orange")
    ax2.set_ylim(bottom=0)
    ax1.set_title("ringrouter soak: " + src)

    # Rates between consecutive samples.
    mid, sent_rate, del_rate = [], [], []
    for i in range(1, len(rows)):
        dt = t[i] - t[i - 1]
        if dt <= 0:
            continue
        mid.append((t[i] + t[i - 1]) / 2)
        sent_rate.append((sent[i] - sent[i - 1]) / dt)
        del_rate.append((delivered[i] - delivered[i - 1]) / dt)
    ax3.plot(mid, sent_rate, marker=".", label="sent msgs/s")
    ax3.plot(mid, del_rate, marker=".", label="delivered msgs/s")
    ax3.set_ylabel("per second")
    ax3.set_xlabel("time (s)")
    ax3.set_ylim(bottom=0)
    ax3.legend(loc="upper right")
    for ax in (ax1, ax3):
        ax.grid(True, alpha=0.3)
        if load_end is not None:
            ax.axvline(load_end, color="grey", linestyle="--")
    if load_end is not None:
        ax1.annotate("end of traffic", (load_end, 0), textcoords="offset points",
                     xytext=(4, 4), color="grey")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A fresh router for the small Python benchmarks in bench/ (contact-writes.py,
room-create.py): started on a free port with its own data directory, stopped on exit, and
its CPU seconds read from /proc."""
import contextlib
import os
import socket
import subprocess
import sys
import tempfile


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def router(binary, shards=2, args=()):
    """Yields (process, "127.0.0.1:PORT") once the router says it is listening (`args`:
    more flags)."""
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{port}", "--http-listen", "off",
             "--shards", str(shards), "--data-dir", d, *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            while "listening on" not in proc.stdout.readline():
                if proc.poll() is not None:
                    sys.exit("the router did not start")
            yield proc, f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait()

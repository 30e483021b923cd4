"""Wall time and router CPU of CreateRoom with N initial members.

    python bench/room-create.py ROUTER_BIN N

Starts ROUTER_BIN on a free port with a fresh data directory, logs N users in once (so they
exist), then has "owner" create three rooms with all N as initial members, one after the
other, and prints each one's wall time and the router's CPU seconds over it. Every initial
member is checked (it has an account, it is under --max-rooms-per-user) before the room is
written. Needs the Python client (`import ringrouter`).
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

import ringrouter


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def main():
    router, n = sys.argv[1], int(sys.argv[2])
    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        proc = subprocess.Popen(
            [router, "--listen", f"127.0.0.1:{port}", "--http-listen", "off",
             "--shards", "2", "--data-dir", d],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            while "listening on" not in proc.stdout.readline():
                if proc.poll() is not None:
                    sys.exit("the router did not start")
            addr = f"127.0.0.1:{port}"
            for i in range(n):
                ringrouter.Client(addr, f"m{i}").close()
            owner = ringrouter.Client(addr, "owner", timeout=120)
            members = [f"m{i}" for i in range(n)]
            for k in range(3):
                c0, t0 = cpu(proc.pid), time.time()
                owner.create_room(f"big{k}", members=members)
                print(f"create with {n} members: {time.time() - t0:.2f} s, "
                      f"router CPU {cpu(proc.pid) - c0:.2f} s", flush=True)
            owner.close()
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()

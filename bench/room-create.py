"""Wall time and router CPU of CreateRoom with N initial members.

    python bench/room-create.py ROUTER_BIN N

Starts ROUTER_BIN on a free port with a fresh data directory, logs N users in once (so they
exist), then has "owner" create three rooms with all N as initial members, one after the
other, and prints each one's wall time and the router's CPU seconds over it. Every initial
member is checked (it has an account, it is under --max-rooms-per-user) before the room is
written. Needs the Python client (`import ringrouter`).
"""
import sys
import time

import ringrouter

from routerproc import cpu_seconds, router


def main():
    binary, n = sys.argv[1], int(sys.argv[2])
    # Three rooms of n members in a row: past the default --max-member-adds-per-minute.
    with router(binary, args=("--max-member-adds-per-minute", str(3 * n))) as (proc, addr):
        for i in range(n):
            ringrouter.Client(addr, f"m{i}").close()
        owner = ringrouter.Client(addr, "owner", timeout=120)
        members = [f"m{i}" for i in range(n)]
        for k in range(3):
            c0, t0 = cpu_seconds(proc.pid), time.time()
            owner.create_room(f"big{k}", members=members)
            print(f"create with {n} members: {time.time() - t0:.2f} s, "
                  f"router CPU {cpu_seconds(proc.pid) - c0:.2f} s", flush=True)
        owner.close()


if __name__ == "__main__":
    main()

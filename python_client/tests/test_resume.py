"""Client(reconnect=True) through a proxy that cuts connections at random byte offsets:
every message sent arrives once, in order, and ``reconnects`` counts the cuts survived."""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import List

import ringrouter
from conftest import Router


class CutProxy:
    """Forwards TCP bytes to ``upstream``; while ``cutting``, kills each connection (both
    sockets) after a random number of bytes in either direction."""

    def __init__(self, upstream: str, seed: int, max_budget: int = 16 * 1024) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rng = random.Random(seed)
        self.max_budget = max_budget
        self.cutting = threading.Event()
        self.cuts = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            pair = (client, server)
            with self.lock:
                budgets = [256 + self.rng.randrange(self.max_budget) for _ in range(2)]
            threading.Thread(target=self._pump, args=(pair, 0, 1, budgets[0]), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, 1, 0, budgets[1]), daemon=True).start()

    def _pump(self, pair, src: int, dst: int, budget: int) -> None:
        try:
            while True:
                data = pair[src].recv(16384)
                if not data:
                    break
                if not self.cutting.is_set():
                    pair[dst].sendall(data)
                    continue
                pair[dst].sendall(data[:budget])
                budget -= min(budget, len(data))
                if budget == 0:
                    with self.lock:
                        self.cuts += 1
                    break
        except OSError:
            pass
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stopped = True
        self.listener.close()


def test_reconnect_resumes_through_random_cuts_without_loss_or_copies(
    router: Router, user
) -> None:
    seed = random.randrange(1 << 30)
    proxy = CutProxy(router.addr, seed)
    a_name, b_name = user("ann"), user("bob")
    n = 2000
    with ringrouter.Client(proxy.addr, a_name, reconnect=True) as ann, ringrouter.Client(
        proxy.addr, b_name, reconnect=True
    ) as bob:
        assert ann.reconnects == 0
        proxy.cutting.set()
        sender = threading.Thread(
            target=lambda: [ann.send(b_name, b"m%06d" % i) for i in range(n)], daemon=True
        )
        sender.start()
        got: List[bytes] = []
        t0 = time.monotonic()
        deadline = t0 + 120
        while len(got) < n and time.monotonic() < deadline:
            # Past half the messages, or 3 s, the cuts stop, so the run ends: a cut
            # every few KiB can keep the receiver from ever acking the backlog the
            # router sends again after each cut, and the client waits 20 ms or more
            # before each reconnect (it does not hammer the router).
            if len(got) > n // 2 or time.monotonic() - t0 > 3:
                proxy.cutting.clear()
            m = bob.recv(timeout=0.5)
            if isinstance(m, ringrouter.Message):
                got.append(m.payload)
        sender.join(timeout=30)
        # Anything more would be a copy.
        extra = bob.recv(timeout=0.5)
        assert extra is None, f"one too many: {extra!r} (seed {seed})"
        assert got == [b"m%06d" % i for i in range(n)], f"seed {seed}: {len(got)} received"
        assert proxy.cuts > 0, "the proxy never cut"
        assert ann.reconnects + bob.reconnects > 0
        assert not ann.closed and not bob.closed
    proxy.close()


def test_reconnect_is_off_by_default(router: Router, user) -> None:
    proxy = CutProxy(router.addr, 1, max_budget=1)
    name = user("solo")
    c = ringrouter.Client(proxy.addr, name)
    assert c.reconnects == 0
    proxy.cutting.set()
    # Any byte through the proxy now cuts the connection, and nothing reconnects.
    try:
        for i in range(50):
            c.send(name, b"x" * 300)
            time.sleep(0.02)
    except ringrouter.ConnectionClosed:
        pass
    deadline = time.monotonic() + 5
    while not c.closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.closed
    assert c.reconnects == 0
    c.close()
    proxy.close()

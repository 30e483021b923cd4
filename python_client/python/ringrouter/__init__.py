"""Python client for ringrouter, a chat / instant-messaging message router.

Quick start::

    import ringrouter

    with ringrouter.Client("127.0.0.1:7878", "alice") as alice:
        alice.send("bob", b"hello")                 # queued, written at once by a writer thread
        alice.send("bob", b"are you there?", wait=True)  # waits for the router's answer
        for msg in alice:                           # blocks; stops when the connection closes
            print(msg.sender, msg.payload)

Names:

- :class:`Client` -- a connection logged in as one user (thread-safe: one thread
  may block in :meth:`Client.recv` while others send).
- :class:`Message` -- a received message.
- :class:`RouterError` (``code``, ``reason``) and its subclasses :class:`AuthError`
  and :class:`ConnectionClosed`. Timeouts raise the builtin :class:`TimeoutError`;
  socket errors (e.g. connection refused) the builtin :class:`OSError` subclasses.
- :mod:`ringrouter.load` -- the Rust load engine (``python -m ringrouter.load``).

The heavy lifting is done in Rust (module ``ringrouter._native``): sending
appends the encoded frame to a buffer that a background thread writes in
batches, and a background reader thread decodes, acks and answers heartbeats.
"""

from ._native import AuthError, Client, ConnectionClosed, Message, RouterError
from . import load

__all__ = [
    "AuthError",
    "Client",
    "ConnectionClosed",
    "Message",
    "RouterError",
    "load",
]

__version__ = "0.1.0"

"""Python client for ringrouter, a chat / instant-messaging message router.

Quick start::

    import ringrouter

    with ringrouter.Client("127.0.0.1:7878", "alice") as alice:
        alice.send("bob", b"hello")                 # queued, written at once by a writer thread
        alice.send("bob", b"are you there?", wait=True)  # waits for the router's answer
        code = alice.create_room("lobby")           # a room; others join by name or code
        alice.send_room("lobby", b"hi all")
        for msg in alice:                           # blocks; stops when the connection closes
            print(msg)                              # a Message, or an Event for a room event

Over TLS, or over WebSocket to the router's HTTP port (``wss`` with both)::

    ringrouter.Client("chat.example.org:7878", "alice", tls=True)   # built-in roots
    ringrouter.Client("127.0.0.1:7880", "bob", transport="ws", tls=True, ca_file="ca.pem")

Names:

- :class:`Client` -- a connection logged in as one user (thread-safe: one thread
  may block in :meth:`Client.recv` while others send).
- :class:`Message` -- a received message.
- :class:`Receipt` -- a read receipt (``user``, ``room``, ``to_user``, ``msg_id``),
  returned by :meth:`Client.recv` after someone called :meth:`Client.mark_read`.
- :class:`RoomInfo` -- a room's owner, members, creation time (and join code, for
  the owner), from :meth:`Client.room_info`.
- :class:`Conversation` -- one entry of :meth:`Client.conversations` (``user`` or
  ``room``, ``last``, ``unread``); :meth:`Client.history` pages back through one.
- :class:`Contacts` -- the contact list (``version``, ``accepted``, ``incoming``,
  ``outgoing``, ``blocked``) from :meth:`Client.contacts`; :meth:`Client.contact_request`,
  ``contact_accept``, ``contact_decline``, ``contact_remove``, ``block``, ``unblock``
  change it.
- :class:`ContactEvent` -- a change to the contact list (``kind`` "request",
  "accepted", "declined", "removed"; ``user``; ``version``), returned by
  :meth:`Client.recv`.
- :class:`Presence` -- a contact's presence (``user``, ``status`` "online", "away",
  "dnd" or "offline", ``text``, ``last_seen_us``): :meth:`Client.presence`, or
  returned by :meth:`Client.recv` when it changes; :meth:`Client.set_presence` sets
  one's own.
- :class:`Event` -- a room event (``kind`` "joined", "left", "removed" or
  "deleted", ``room``, ``user``), also returned by :meth:`Client.recv`.
- :class:`RouterError` (``code``, ``status``, ``reason``) and its subclasses
  :class:`AuthError` (a refused login, or any ``UNAUTHORIZED`` answer) and
  :class:`ConnectionClosed`. Timeouts raise the builtin :class:`TimeoutError`;
  socket errors (e.g. connection refused) the builtin :class:`OSError` subclasses.
- :class:`Status` -- the protocol's status codes, an :class:`enum.IntEnum` with the
  wire values (``err.status == Status.NOT_FOUND``; ``err.code`` is its name).
- :mod:`ringrouter.load` -- the Rust load engine (``python -m ringrouter.load``);
  :class:`ringrouter.load.LoadReport` is what a run measured.
- ``__version__`` -- the package version, the same as the Rust workspace's.

The heavy lifting is done in Rust (module ``ringrouter._native``): sending
appends the encoded frame to a buffer that a background thread writes in
batches, and a background reader thread decodes, acks and answers heartbeats.
"""

from ._native import (
    AuthError,
    Client,
    ConnectionClosed,
    ContactEvent,
    Contacts,
    Conversation,
    Event,
    Message,
    Presence,
    Receipt,
    RoomInfo,
    RouterError,
    Status,
)
from ._native import __version__ as __version__  # the one version: see _native.pyi
from . import load

__all__ = [
    "AuthError",
    "Client",
    "ConnectionClosed",
    "ContactEvent",
    "Contacts",
    "Conversation",
    "Event",
    "Message",
    "Presence",
    "Receipt",
    "RoomInfo",
    "RouterError",
    "Status",
    "load",
]

"""Type stubs for ``ringrouter._native``, the Rust extension (crate ``pybind/``).

Everything here but :func:`load_run` is re-exported by :mod:`ringrouter`; import it
from there. :func:`load_run` is the engine behind :func:`ringrouter.load.run`, which
wraps it (use that one).
"""

from enum import IntEnum
from types import TracebackType
from os import PathLike
from typing import Callable, Iterable, Iterator, List, Literal, Optional, Type, Union, final

__all__ = [
    "Client",
    "Contacts",
    "ContactEvent",
    "Conversation",
    "Message",
    "Presence",
    "Event",
    "Receipt",
    "RoomInfo",
    "RouterError",
    "AuthError",
    "ConnectionClosed",
    "Status",
    "load_run",
]

__version__: str
"""The package version: the Rust workspace's (``[workspace.package] version`` in the
root ``Cargo.toml``), compiled in; the wheel's version is the same."""

class Status(IntEnum):
    """A protocol status (``enum Status`` of ``proto/router.proto``), with its wire value.

    Member names are the protobuf names without their ``STATUS_`` prefix; the
    enum is built at import from the Rust enum generated from the ``.proto``, so
    it always matches the router (a test checks these stubs against both).
    Being an :class:`enum.IntEnum`, a member equals its wire value:
    ``Status.NOT_FOUND == 6``; ``Status.NOT_FOUND.name == "NOT_FOUND"``, the
    string :attr:`RouterError.code` holds.
    """

    UNSPECIFIED = 0
    OK = 1
    BAD_FRAME = 2
    """The bytes on the wire are not a frame (bad length, truncated, undecodable)."""
    BAD_REQUEST = 3
    """A well-formed frame whose content is invalid (empty user name, ...)."""
    UNAUTHORIZED = 4
    """Not logged in, or the credentials were refused."""
    FORBIDDEN = 5
    NOT_FOUND = 6
    CONFLICT = 7
    TOO_LARGE = 8
    """A frame or payload over a configured limit."""
    RATE_LIMITED = 9
    UNAVAILABLE = 10
    """The router is shutting down or cannot take the request now."""
    INTERNAL = 11
    SLOW_CONSUMER = 12
    """The session read too slowly and was closed."""
    TIMEOUT = 13
    """The session did not answer heartbeats and was closed."""

class RouterError(Exception):
    """The router refused a request or reported an error.

    ``code`` is the status name, e.g. ``"NOT_FOUND"``, ``"FORBIDDEN"``,
    ``"CONFLICT"``, ``"RATE_LIMITED"``, ``"BAD_REQUEST"``, ``"UNAUTHORIZED"``,
    ``"TOO_LARGE"``, ``"SLOW_CONSUMER"`` (``"CLOSED"`` for :class:`ConnectionClosed`,
    ``"PROTOCOL"`` if the router sent bytes that are not a valid frame);
    ``status`` is the same as a :class:`Status` member (``None`` for ``"CLOSED"``
    and ``"PROTOCOL"``, which are not protocol statuses), so
    ``err.status == Status.NOT_FOUND`` and ``err.code == "NOT_FOUND"`` agree;
    ``reason`` is the router's human-readable text. ``str(err)`` is ``"CODE: reason"``.
    """

    code: str
    """The status name (``Status.X.name``), or ``"CLOSED"`` / ``"PROTOCOL"``."""
    status: Optional[Status]
    """The status as a :class:`Status` member; ``None`` when ``code`` is ``"CLOSED"``
    or ``"PROTOCOL"``."""
    reason: str
    """The router's human-readable text."""

class AuthError(RouterError):
    """The router refused the login (unknown user, bad password, invalid or expired
    token), or answered a request with ``UNAUTHORIZED``. ``code`` says which status."""

class ConnectionClosed(RouterError):
    """The connection is closed: by :meth:`Client.close`, by the router, or by the network.

    ``code`` is ``"CLOSED"``, ``status`` is ``None`` and ``reason`` says why.
    """

@final
class Message:
    """A message delivered to this session. Immutable; equal when all fields are equal."""

    @property
    def sender(self) -> str:
        """The authenticated sender (stamped by the router; a client cannot choose it)."""
    @property
    def room(self) -> Optional[str]:
        """The room the message was sent to, or ``None`` for a direct message."""
    @property
    def payload(self) -> bytes:
        """The payload bytes."""
    @property
    def seq(self) -> int:
        """Per-session sequence number, 1, 2, 3, ... in delivery order."""
    @property
    def msg_id(self) -> int:
        """Message id, the same for every recipient and redelivery (a dedupe key)."""
    @property
    def timestamp_us(self) -> int:
        """Router clock when it accepted the message, microseconds since the Unix epoch."""
    @property
    def ephemeral(self) -> bool:
        """``True`` for an ephemeral message (``send(..., ephemeral=True)``: typing
        indicators and the like). It reached live sessions only, is never stored or
        redelivered, and its ``seq`` is 0."""
    @property
    def outgoing(self) -> bool:
        """``True`` for a copy of a direct message this user sent from another device:
        ``sender`` is this user, :attr:`to_user` the recipient, ``seq`` 0 (live
        sessions only)."""
    @property
    def to_user(self) -> Optional[str]:
        """The recipient of an outgoing copy (see :attr:`outgoing`); ``None`` otherwise."""

@final
class Conversation:
    """One conversation of :meth:`Client.conversations`: a direct one (``user`` set) or
    a room (``room`` set). Immutable."""

    @property
    def user(self) -> Optional[str]:
        """The other user of a direct conversation, or ``None`` for a room."""
    @property
    def room(self) -> Optional[str]:
        """The room, or ``None`` for a direct conversation."""
    @property
    def last(self) -> Message:
        """Its newest message kept (``seq`` 0)."""
    @property
    def unread(self) -> int:
        """Messages after this user's read mark in it (the newest message it marked
        with :meth:`Client.mark_read`); without a mark, after the last one it sent there
        (all kept ones if it never did)."""

@final
class Event:
    """A room event, returned by :meth:`Client.recv` among the messages.

    Sent to the live sessions of every member of the room (the user concerned
    included). A member without a live session finds the events that concern it
    (it joined, was added or removed, the room was deleted) in its offline queue at
    its next login, in order with its messages; another member's join, leave or
    removal is not stored (:meth:`Client.room_info` tells who is in). In a room of
    more than ``--room-events-max-members`` members, a join, leave or removal goes
    only to the member concerned and the owner. Immutable; equal when all fields are
    equal.
    """

    @property
    def kind(self) -> str:
        """``"joined"``, ``"left"``, ``"removed"`` or ``"deleted"`` (``"unknown"`` for
        a kind this client does not know)."""
    @property
    def room(self) -> str:
        """The room."""
    @property
    def user(self) -> str:
        """The user who joined, left or was removed; the owner for ``"deleted"``."""

@final
class Receipt:
    """A read receipt, returned by :meth:`Client.recv`: ``user`` read a conversation
    up to message ``msg_id`` (:meth:`Client.mark_read`). Immutable; equal when all
    fields are equal.

    For a room, ``room`` names it. For a direct conversation ``room`` is ``None`` and
    ``to_user`` is its other side: this user when the peer read, or the peer when the
    receipt comes from one of this user's other devices (``user`` is then this user).
    """

    @property
    def user(self) -> str:
        """Who read."""
    @property
    def room(self) -> Optional[str]:
        """The room read, or ``None`` for a direct conversation."""
    @property
    def to_user(self) -> Optional[str]:
        """The other side of a direct conversation; ``None`` for a room."""
    @property
    def msg_id(self) -> int:
        """The message read up to."""

@final
class RoomInfo:
    """A room's details, from :meth:`Client.room_info`. Immutable."""

    @property
    def name(self) -> str:
        """The room's name."""
    @property
    def owner(self) -> str:
        """The room's owner."""
    @property
    def members(self) -> List[str]:
        """The members (the owner included), in byte order."""
    @property
    def created_us(self) -> int:
        """When the room was created, microseconds since the Unix epoch (0 for rooms
        created before routers kept it)."""
    @property
    def join_code(self) -> Optional[str]:
        """The join code: only the owner is told (``None`` for other members)."""

@final
class Contacts:
    """This user's contact list, from :meth:`Client.contacts`. Immutable."""

    @property
    def version(self) -> int:
        """The list's version: it grows with every change."""
    @property
    def accepted(self) -> List[str]:
        """Accepted contacts, in byte order."""
    @property
    def incoming(self) -> List[str]:
        """Users whose requests wait for this user's answer."""
    @property
    def outgoing(self) -> List[str]:
        """Users this user asked, waiting for their answer."""
    @property
    def blocked(self) -> List[str]:
        """Users this user blocked."""

@final
class ContactEvent:
    """A change to this user's contact list, returned by :meth:`Client.recv`.

    Sent to the other user's live devices (kept in its offline queue and delivered at
    its next login if it has none), and to the acting user's other live devices.
    Immutable; equal when all fields are equal.
    """

    @property
    def kind(self) -> str:
        """``"request"``, ``"accepted"``, ``"declined"``, ``"removed"`` (and, on the
        blocking user's other devices only, ``"blocked"``, ``"unblocked"``);
        ``"unknown"`` for a kind this client does not know."""
    @property
    def user(self) -> str:
        """The other user."""
    @property
    def version(self) -> int:
        """This user's list version after the change."""
    @property
    def state(self) -> str:
        """Where ``user`` stands now: ``"accepted"``, ``"incoming"``, ``"outgoing"``,
        ``"blocked"`` or ``"none"``."""

@final
class Presence:
    """A user's presence: from :meth:`Client.presence`, or returned by
    :meth:`Client.recv` when an accepted contact's presence changes (never stored:
    only live devices hear of it; at most one change a second per user). Immutable;
    equal when all fields are equal."""

    @property
    def user(self) -> str:
        """The user."""
    @property
    def status(self) -> str:
        """``"online"``, ``"away"``, ``"dnd"`` or ``"offline"``: the most present of
        the user's devices' (online > dnd > away > offline)."""
    @property
    def text(self) -> str:
        """The status text of the device that has that status."""
    @property
    def last_seen_us(self) -> int:
        """When the user's last device went away, microseconds since the Unix epoch
        (0 while online, or never seen)."""

@final
class Client:
    """A connection to the router, logged in as one user.

    ``Client(addr, user, *, password=None, token=None, device="python", timeout=5.0,
    tls=False, ca_file=None, transport="tcp", reconnect=False)``
    connects to ``addr`` (``"host:port"``) and logs in; it raises :class:`AuthError`
    if the router refuses the login, :class:`TimeoutError` if connecting or logging
    in takes longer than ``timeout`` seconds, and :class:`OSError` (e.g.
    :class:`ConnectionRefusedError`) if the router cannot be reached. ``timeout``
    (seconds, more than 0 and at most 1e9, else :class:`ValueError`) also bounds every
    request that waits for the router's answer (``wait=True``, rooms, history, ...).

    Transports: ``tls=True`` connects over TLS (a router started with
    ``--tls-cert``/``--tls-key``) and verifies the router's certificate against
    ``ca_file`` (a PEM file, ``str`` or path), or without one against the
    built-in roots (Mozilla's, as webpki ships them), for the host named in
    ``addr``; a certificate that does not verify raises
    :class:`ssl.SSLCertVerificationError`, another TLS failure
    :class:`ssl.SSLError` (both are :class:`OSError`). ``transport="ws"`` speaks
    WebSocket (subprotocol ``ringrouter.v1``, path ``/ws``) to the router's HTTP
    port (``--http-listen``, default ``127.0.0.1:7880``), which ``addr`` then
    names; with ``tls=True`` that is ``wss``. Everything else behaves the same
    over every transport. Under
    ``--auth jwt`` pass ``token``; ``user`` may then be ``""`` (the token's subject
    is used); under ``--auth accounts`` pass ``password`` (create the account
    first with :meth:`register`). ``device`` names this session; a user may have
    several at once, and each of them receives every message sent to the user.

    A client is thread-safe: one thread may block in :meth:`recv` (or iterate)
    while others :meth:`send`. Use it as a context manager, or call :meth:`close`.

    Sending is asynchronous: :meth:`send` encodes the message into a buffer that a
    background thread writes to the socket (at once when idle, in large batches
    when busy). A background reader thread receives messages, acknowledges the ones
    handed out by :meth:`recv` (cumulatively, every 256 messages or 100 ms) and
    answers the router's heartbeats.

    With ``reconnect=True`` a dropped connection is resumed transparently:
    :meth:`send` and :meth:`recv` keep working while the client reconnects (backoff
    from 20 ms doubling to 2 s, for up to 60 s; then :class:`ConnectionClosed`) and
    logs in again with the router's resume token; the router's Error frame that announces
    the end it resumes from (``UNAVAILABLE`` "shutting down", a heartbeat ``TIMEOUT``,
    ``SLOW_CONSUMER``) is not raised by :meth:`recv` (it is if the client gives up).
    Messages sent without ``wait`` are
    kept until the router acknowledges them and sent again if it had not taken them
    (the router drops copies), so nothing is lost; up to 4 MiB of them are kept, and
    past that :meth:`send` waits for the router. :meth:`recv` never returns the same
    message (sender, ``msg_id``) twice (the last 100 000 are remembered).
    Requests that wait for an answer (``wait=True``, rooms, history, ...) are not
    sent again after a cut: they raise :class:`TimeoutError`. :attr:`reconnects`
    counts the reconnections.
    """

    def __new__(
        cls,
        addr: str,
        user: str,
        *,
        password: Optional[str] = None,
        token: Optional[str] = None,
        device: str = "python",
        timeout: float = 5.0,
        tls: bool = False,
        ca_file: Optional[Union[str, "PathLike[str]"]] = None,
        transport: Literal["tcp", "ws"] = "tcp",
        reconnect: bool = False,
    ) -> "Client": ...
    @property
    def user(self) -> str:
        """The authenticated user name (under jwt: the token's subject)."""
    @property
    def session_id(self) -> int:
        """The router's id for this session."""
    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by :meth:`close`, the router or the network)."""
    @property
    def reconnects(self) -> int:
        """How many times a dropped connection was re-established (``reconnect=True``)."""
    def send(
        self, to: str, payload: bytes, *, wait: bool = False, ephemeral: bool = False
    ) -> None:
        """Sends ``payload`` to every session (device) of user ``to``.

        The user's other devices get a copy (a :class:`Message` with
        ``outgoing=True`` and ``to_user=to``).

        Without ``wait`` the message is queued and written by the writer thread
        shortly after; the call only blocks when the send buffer (4 MiB) is full,
        i.e. when the router reads more slowly than the caller sends. With
        ``wait=True`` it waits (up to the client's ``timeout``) for the router's
        answer and raises :class:`RouterError` if the answer is not OK (e.g.
        ``code == "NOT_FOUND"``: ``to`` is not a known user; a known user who is
        offline has the message stored, and the answer is OK), :class:`TimeoutError` if
        none comes in time.

        ``to`` must not be empty (:class:`ValueError`). A message whose frame is larger
        than the router takes (``max_frame_bytes`` of its login answer: 1 MiB by
        default) raises :class:`RouterError` ``"TOO_LARGE"`` at once, with or without
        ``wait``, and nothing is sent (the router would close the connection); one
        within the frame but over the router's ``--max-payload-bytes`` is refused by
        the router (``"TOO_LARGE"`` too: raised with ``wait=True``, else from
        :meth:`recv`).

        With ``ephemeral=True`` (typing indicators and the like) it reaches the live
        sessions of ``to`` only: never stored or redelivered, no copy for the other
        devices; it arrives as a :class:`Message` with ``ephemeral=True`` and
        ``seq`` 0. ``wait=True`` then says OK once the router routed it.

        Raises :class:`ConnectionClosed` once the connection is closed.
        """
    def send_many(self, to: str, payloads: Iterable[bytes]) -> int:
        """Sends every payload of ``payloads`` to ``to`` (fire and forget), in order.

        Faster than calling :meth:`send` in a loop. Returns how many were queued.
        Like :meth:`send` without ``wait``, it blocks while the send buffer is full
        (the router reads more slowly) and sees signals meanwhile (Ctrl-C raises
        :class:`KeyboardInterrupt`; what was queued before stays queued).
        ``to`` must not be empty (:class:`ValueError`); a payload too large for the
        router's frame raises :class:`RouterError` ``"TOO_LARGE"`` (see
        :meth:`send`) and neither it nor the ones after it are sent. Likewise an
        item that is not bytes raises :class:`TypeError` (an exception the iterable
        raises is raised as is) once every payload before it is queued, and none
        after it is sent.
        """
    def send_room(
        self, room: str, payload: bytes, *, wait: bool = False, ephemeral: bool = False
    ) -> None:
        """Sends ``payload`` to every member of ``room`` (every session of each
        member, the sender's other devices included).

        As :meth:`send`: queued without ``wait``; with ``wait=True`` it waits for the
        router's answer and raises :class:`RouterError` if it is not OK (e.g.
        ``"NOT_FOUND"``: no such room, ``"FORBIDDEN"``: not a member).
        With ``ephemeral=True`` it reaches the members' live sessions only (see
        :meth:`send`). ``room`` must not be empty (:class:`ValueError`); a payload too
        large for the router's frame raises :class:`RouterError` ``"TOO_LARGE"``
        before anything is sent (see :meth:`send`).
        """
    @staticmethod
    def register(
        addr: str,
        user: str,
        password: str,
        *,
        timeout: float = 5.0,
        tls: bool = False,
        ca_file: Optional[Union[str, "PathLike[str]"]] = None,
        transport: Literal["tcp", "ws"] = "tcp",
    ) -> None:
        """Creates the account ``user`` on a router started with ``--auth accounts``.

        Uses a connection of its own, closed again; log in afterwards with
        ``Client(addr, user, password=password)``. Raises :class:`RouterError` with
        ``code == "CONFLICT"`` if the user exists, ``"BAD_REQUEST"`` for a name or
        password the router does not accept, :class:`TimeoutError` if connecting or
        the router's answer takes longer than ``timeout`` seconds. ``timeout``,
        ``tls``, ``ca_file`` and ``transport`` as for :class:`Client`.
        """
    def create_room(
        self, name: str, password: Optional[str] = None, *, members: Iterable[str] = ()
    ) -> str:
        """Creates room ``name``, owned by this user (its first member), protected
        by ``password`` if given (positional or keyword: ``create_room("r", "pw")``
        and ``create_room("r", password="pw")`` are the same), with ``members``
        (keyword only) as members from the start. Returns
        the room's join code. Each initial member gets an :class:`Event` ``"joined"``
        naming itself (at its next login if it is offline). ``members`` is any iterable
        of user names (a list, tuple, set, generator, ...); a ``str`` itself, or an item
        that is not one, is a :class:`TypeError`.

        Raises :class:`RouterError` ``"CONFLICT"`` if the name is taken,
        ``"NOT_FOUND"`` if a member does not exist, ``"RATE_LIMITED"`` if a member is
        in too many rooms, ``"BAD_REQUEST"`` for more members than the router's
        ``--max-members-per-room``; nothing is created then.
        """
    def mark_read(
        self, *, user: Optional[str] = None, room: Optional[str] = None, msg_id: int
    ) -> None:
        """Marks a conversation read up to message ``msg_id``: the direct one with
        ``user``, or the room ``room`` (give exactly one, else :class:`ValueError`).

        The peer's live devices (every member's, for a room) and this user's other
        live devices get a :class:`Receipt` from :meth:`recv`, so unread counts agree
        across devices; no receipt is stored for devices that are offline. With history
        on, the router keeps the mark: :meth:`conversations` counts ``unread`` after it.
        Waits for the router: :class:`RouterError` ``"FORBIDDEN"`` for a room this user
        is not in.
        """
    def contact_request(self, user: str) -> None:
        """Asks ``user`` to become a contact (or accepts ``user``'s pending request).

        ``user`` gets a :class:`ContactEvent` ``"request"`` (at its next login if it is
        offline). Raises :class:`RouterError` ``"FORBIDDEN"`` if ``user`` blocked this
        user, ``"NOT_FOUND"`` for an unknown user, ``"RATE_LIMITED"`` past the router's
        ``--max-contacts-per-user`` (either list) or ``--max-contact-requests``
        (requests waiting for ``user``).
        """
    def contact_accept(self, user: str) -> None:
        """Accepts ``user``'s request (``"NOT_FOUND"`` without one); ``user`` gets a
        :class:`ContactEvent` ``"accepted"``, and each sees the other's presence."""
    def contact_decline(self, user: str) -> None:
        """Declines ``user``'s request (``"NOT_FOUND"`` without one); ``user`` gets a
        :class:`ContactEvent` ``"declined"``."""
    def contact_remove(self, user: str) -> None:
        """Removes the contact ``user``, or withdraws this user's request to it
        (``"NOT_FOUND"`` otherwise); ``user`` gets a :class:`ContactEvent` ``"removed"``."""
    def block(self, user: str) -> None:
        """Blocks ``user``: its direct messages and contact requests to this user get
        :class:`RouterError` ``"FORBIDDEN"``, and it is told nothing else."""
    def unblock(self, user: str) -> None:
        """Unblocks ``user`` (``"NOT_FOUND"`` if it was not blocked)."""
    def contacts(self) -> Contacts:
        """This user's contact list (``version``, ``accepted``, ``incoming``,
        ``outgoing``, ``blocked``)."""
    def set_presence(self, status: str = "online", text: str = "") -> None:
        """Sets this device's presence: ``status`` ``"online"``, ``"away"``, ``"dnd"``
        or ``"offline"`` (else :class:`ValueError`) and a short ``text``
        (:class:`RouterError` ``"BAD_REQUEST"`` past the router's
        ``--max-presence-text-bytes``). Accepted contacts see the most present status
        of this user's devices.
        """
    def presence(self, user: str) -> Presence:
        """The :class:`Presence` of ``user``, an accepted contact (or this user).

        Raises :class:`RouterError` ``"FORBIDDEN"`` for anyone else (unknown users
        included: strangers learn nothing).
        """
    def room_info(self, room: str) -> RoomInfo:
        """The owner, members and creation time of ``room``, and its join code when
        this user owns it.

        Raises :class:`RouterError` ``"FORBIDDEN"`` if this user is not a member,
        ``"NOT_FOUND"`` for no such room.
        """
    def join_room(self, name_or_code: str, password: Optional[str] = None) -> str:
        """Joins a room by its name or its join code; returns the room's name.

        Raises :class:`RouterError` ``"NOT_FOUND"`` for an unknown room or code,
        ``"FORBIDDEN"`` for a wrong (or missing) password.
        """
    def leave_room(self, room: str) -> None:
        """Leaves ``room``."""
    def add_member(self, room: str, user: str) -> None:
        """Adds ``user`` to ``room``; owner only (else :class:`RouterError`
        ``"FORBIDDEN"``), or any member on a router started with
        ``--room-add-policy members``."""
    def remove_member(self, room: str, user: str) -> None:
        """Removes ``user`` from ``room``; owner only (else :class:`RouterError` ``"FORBIDDEN"``)."""
    def delete_room(self, room: str) -> None:
        """Deletes ``room``; owner only (else :class:`RouterError` ``"FORBIDDEN"``).

        Every member gets an :class:`Event` with ``kind == "deleted"``.
        """
    def rooms(self) -> List[str]:
        """The names of the rooms this user is a member of."""
    def history(
        self,
        *,
        user: Optional[str] = None,
        room: Optional[str] = None,
        before: Union[int, Message, None] = None,
        limit: int = 50,
    ) -> List[Message]:
        """Messages of one conversation, **oldest first**: the direct conversation with
        ``user`` (both directions), or ``room`` (this user must be a member now, else
        :class:`RouterError` ``FORBIDDEN``). Give exactly one of the two
        (:class:`ValueError` otherwise).

        ``before``: a ``msg_id`` (or a :class:`Message`) of the conversation; the page
        ends just before it (``None``: the newest messages). ``RouterError`` ``NOT_FOUND``
        if it is not in the history kept. ``limit``: 1 to the router's
        ``--history-page-max`` (500 by default; more is ``BAD_REQUEST``), 0: 50; a
        negative one is a :class:`ValueError`. Page back with ``before=page[0]`` until a page is empty.
        Each is a :class:`Message` with ``seq`` 0. The router keeps the last
        ``--history-per-conversation`` messages (10 000) per conversation."""
    def conversations(self, limit: int = 50, *, before_us: int = 0) -> List[Conversation]:
        """This user's conversations with a message kept (direct ones, and rooms it is a
        member of), newest last message first, at most ``limit`` (1 to the router's
        ``--history-page-max``, 500 by default; less than 1 is a :class:`ValueError`,
        more ``BAD_REQUEST``).

        ``before_us`` pages on: only conversations whose last message is older than it
        (pass the last one's ``last.timestamp_us``; 0: from the newest; negative: a
        :class:`ValueError`)."""
    def list_users(self, pattern: str = "*") -> List[str]:
        """User names matching the glob ``pattern`` (``*`` any run, ``?`` one
        character), in byte order, at most the router's page size of them."""
    def delete_account(self) -> None:
        """Deletes this user's account, offline messages and room memberships (rooms
        it owns are deleted).

        The router then ends every session of the user, this one included: what
        follows on this client is a :class:`RouterError` from :meth:`recv`, then
        :class:`ConnectionClosed`.
        """
    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until everything sent so far is written to the socket.

        Returns ``False`` if ``timeout`` seconds passed first (``None``, or
        ``float("inf")``: no limit).
        """
    def recv(
        self, timeout: Optional[float] = None
    ) -> Optional[Union[Message, Event, Receipt, ContactEvent, Presence]]:
        """The next message, :class:`Event` for a room event, :class:`Receipt` for a
        read receipt, :class:`ContactEvent` for a change to the contact list or
        :class:`Presence` for a contact's presence, waiting up to
        ``timeout`` seconds (``None``, or ``float("inf")``: forever). Both come in the
        order the router sent them.

        Returns ``None`` on timeout (``timeout=0`` polls). Raises
        :class:`RouterError` when the router reports an error about this session
        (e.g. a fire-and-forget send it refused), and :class:`ConnectionClosed` once
        the connection is closed and every message received before was returned.
        """
    def close(self) -> None:
        """Sends what is queued and a Logout, and closes the connection.

        Messages received but not yet returned by :meth:`recv` are dropped (the
        router redelivers what was not acknowledged at the next login). Idempotent.
        """
    def __enter__(self) -> "Client": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
    def __iter__(
        self,
    ) -> Iterator[Union[Message, Event, Receipt, ContactEvent, Presence]]:
        """Yields what :meth:`recv` returns (messages, room events, receipts, contact
        events, presence) as it arrives; stops when the connection closes."""
    def __next__(self) -> Union[Message, Event, Receipt, ContactEvent, Presence]: ...

def load_run(
    addr: str,
    *,
    pairs: int,
    size: int,
    messages: Optional[int],
    duration: Optional[float],
    fanout: Optional[int],
    rate: Optional[float],
    window: Optional[int] = None,
    threads: Optional[int] = None,
    progress: Optional[Callable[[float, int, int], None]] = None,
    every: float = 1.0,
    transport: Literal["tcp", "ws"] = "tcp",
    tls: bool = False,
    ca_file: Optional[Union[str, "PathLike[str]"]] = None,
    server_pid: Optional[int] = None,
    user_prefix: Optional[str] = None,
    protocol: Literal["ringrouter", "nats", "redis"] = "ringrouter",
    redis_reply: Literal["on", "off"] = "on",
    split_shards: int = 0,
    client_seq: bool = False,
) -> str:
    """Runs the Rust load engine without the GIL; returns its report as JSON.

    Use :func:`ringrouter.load.run` instead. ``progress(elapsed_s, sent, delivered)``
    is called every ``every`` seconds while the run lasts; ``transport``, ``tls``
    and ``ca_file`` as for :class:`Client`; ``protocol``, ``redis_reply``,
    ``split_shards`` and ``client_seq`` as for :func:`ringrouter.load.run`
    (:class:`ValueError` for a ``protocol`` or ``redis_reply`` not among those
    named, or a negative ``split_shards``).
    """

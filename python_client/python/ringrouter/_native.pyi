"""Type stubs for ``ringrouter._native``, the Rust extension (crate ``pybind/``).

Everything here is re-exported by :mod:`ringrouter`; import it from there.
"""

from types import TracebackType
from typing import Callable, Iterable, Iterator, Optional, Type, final

__all__ = ["Client", "Message", "RouterError", "AuthError", "ConnectionClosed", "load_run"]

class RouterError(Exception):
    """The router refused a request or reported an error.

    ``code`` is the status name, e.g. ``"NOT_FOUND"``, ``"UNAUTHORIZED"``,
    ``"TOO_LARGE"``, ``"SLOW_CONSUMER"`` (``"CLOSED"`` for :class:`ConnectionClosed`,
    ``"PROTOCOL"`` if the router sent bytes that are not a valid frame);
    ``reason`` is the router's human-readable text. ``str(err)`` is ``"CODE: reason"``.
    """

    code: str
    reason: str

class AuthError(RouterError):
    """The router refused the login (unknown user, bad password, invalid or expired token)."""

class ConnectionClosed(RouterError):
    """The connection is closed: by :meth:`Client.close`, by the router, or by the network.

    ``code`` is ``"CLOSED"`` and ``reason`` says why.
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

@final
class Client:
    """A connection to the router, logged in as one user.

    ``Client(addr, user, *, password=None, token=None, device="python", timeout=5.0)``
    connects to ``addr`` (``"host:port"``) and logs in; it raises :class:`AuthError`
    if the router refuses the login, :class:`TimeoutError` if connecting or logging
    in takes longer than ``timeout`` seconds, and :class:`OSError` (e.g.
    :class:`ConnectionRefusedError`) if the router cannot be reached. Under
    ``--auth jwt`` pass ``token``; ``user`` may then be ``""`` (the token's subject
    is used). ``device`` names this session; a user may have several at once, and
    each of them receives every message sent to the user.

    A client is thread-safe: one thread may block in :meth:`recv` (or iterate)
    while others :meth:`send`. Use it as a context manager, or call :meth:`close`.

    Sending is asynchronous: :meth:`send` encodes the message into a buffer that a
    background thread writes to the socket (at once when idle, in large batches
    when busy). A background reader thread receives messages, acknowledges the ones
    handed out by :meth:`recv` (cumulatively, every 256 messages or 100 ms) and
    answers the router's heartbeats.
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
    def send(self, to: str, payload: bytes, *, wait: bool = False) -> None:
        """Sends ``payload`` to every session (device) of user ``to``.

        Without ``wait`` the message is queued and written by the writer thread
        shortly after; the call only blocks when the send buffer (4 MiB) is full,
        i.e. when the router reads more slowly than the caller sends. With
        ``wait=True`` it waits (up to the client's ``timeout``) for the router's
        answer and raises :class:`RouterError` if the answer is not OK (e.g.
        ``code == "NOT_FOUND"``: ``to`` has no session), :class:`TimeoutError` if
        none comes in time.

        Raises :class:`ConnectionClosed` once the connection is closed.
        """
    def send_many(self, to: str, payloads: Iterable[bytes]) -> int:
        """Sends every payload of ``payloads`` to ``to`` (fire and forget), in order.

        Faster than calling :meth:`send` in a loop. Returns how many were queued.
        """
    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until everything sent so far is written to the socket.

        Returns ``False`` if ``timeout`` seconds passed first (``None``: no limit).
        """
    def recv(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message, waiting up to ``timeout`` seconds (``None``: forever).

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
    def __iter__(self) -> Iterator[Message]:
        """Yields messages as they arrive; stops when the connection closes."""
    def __next__(self) -> Message: ...

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
) -> str:
    """Runs the Rust load engine without the GIL; returns its report as JSON.

    Use :func:`ringrouter.load.run` instead. ``progress(elapsed_s, sent, delivered)``
    is called every ``every`` seconds while the run lasts.
    """

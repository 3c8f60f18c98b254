"""What the service keeps of one connection, and what it needs of the layers around it.

Layer: service. Imports asyncio and the chat domain; never a transport or a concrete store.

The service reaches a connection only through `Socket` and delivers to many through `Outbox`:
the server's `WebSocket` and its broadcast are one implementation, the service tests' fakes
another. Time comes from a `Clock`, so the tests can move it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from sohbet.auth import Identity
from sohbet.chat import wire
from sohbet.chat.ids import UserId
from sohbet.chat.model import StoredMessage
from sohbet.chat.wire import EventType
from sohbet.ws.codes import CloseCode

__all__ = ["NO_SOCKET", "Call", "Clock", "LoopClock", "Notifier", "Outbox", "Session", "Socket"]


class Socket(Protocol):
    """A client's WebSocket as the service sees it (the server's `WebSocket` is one)."""

    @property
    def id(self) -> int: ...
    def send_text(self, data: str | bytes) -> None: ...
    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...
    async def drained(self) -> None: ...


class _NoSocket:
    """The socket of a session that has none (an HTTP API call): it is in no hub and sends nothing."""

    id = 0

    def send_text(self, data: str | bytes) -> None:  # see Socket
        pass

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:  # see Socket
        pass

    async def drained(self) -> None:  # see Socket
        pass


#: What an HTTP API call has instead of a socket: fan-out skips nobody for it.
NO_SOCKET: Final = _NoSocket()


class Outbox(Protocol):
    """Delivers one encoded message to many sockets (all but *skip*), framing it once."""

    def deliver(self, sockets: Iterable[Socket], data: bytes, *, skip: Socket | None = None) -> int: ...


class Notifier(Protocol):
    """Tells the application of messages for members who had no open connection (the webhook).

    `notify` must return at once and never raise: it runs in the writer, per message.
    """

    def notify(self, recipients: list[UserId], message: dict[str, Any]) -> None: ...


class Clock(Protocol):
    """Where the service reads the time."""

    def now(self) -> float:
        """Monotonic seconds: deadlines, rate buckets, grace periods, typing throttles."""
        ...

    def wall(self) -> float:
        """Epoch seconds: message timestamps and token expiry."""
        ...


class LoopClock:
    """The clock of the event loop it was made in (made outside one: of the loop running at each
    call), and the system's wall clock."""

    #: See Clock. Made in a running loop, that loop's own `time`: every send reads the clock,
    #: and a method of ours would add a Python frame and a lookup of the loop (~0.2 µs).
    now: Callable[[], float]

    def __init__(self) -> None:
        try:
            self.now = asyncio.get_running_loop().time
        except RuntimeError:  # made outside a loop: the one running at each call
            self.now = _running_loop_time

    def wall(self) -> float:  # see Clock
        return time.time()


def _running_loop_time() -> float:
    return asyncio.get_running_loop().time()


_ACK: Final = EventType.ACK  # looked up once: an ack is sent per message


class Session:
    """The chat state of one connection: the service answers its requests through `answer`."""

    __slots__ = ("admitted", "closed", "early", "errors", "exp", "in_flight", "limited", "lock", "socket", "user")

    def __init__(self, socket: Socket, identity: Identity) -> None:
        self.socket = socket
        self.user: UserId = identity.user_id
        self.exp = identity.exp
        #: When the latest client-fault errors happened: a sliding 10 s window (made at the
        #: first; an idle connection's footprint is what a server has most of).
        self.errors: list[float] | None = None  # at most max_errors_per_10s + 1 long
        #: Serialises this connection's reads (sync, history, ...): one at a time holds memory.
        #: Made at the first read, like `errors`.
        self.lock: asyncio.Lock | None = None
        #: Requests of this connection started and not yet answered (waiting for storage).
        self.in_flight = 0
        self.closed = False
        #: Counted by the broker against the user's limit over the cluster (`Cluster.admit`).
        self.admitted = False
        #: Messages that arrived before `hello`, while the cluster admits the connection.
        self.early: list[bytes] | None = None
        #: Whether its requests spend from the user's rate buckets: not when the application's
        #: backend acts for the user with its API key (an `HTTP API` call).
        self.limited = True

    def answer(self, kind: EventType, payload: dict[str, Any], ref: str | None) -> None:
        """Send the reply to one of this connection's requests (nothing once it has closed)."""
        if not self.closed:
            self.socket.send_text(wire.encode(kind, payload, ref))

    def acked(self, message: StoredMessage, obj: dict[str, Any], ref: str | None) -> None:
        """Its `chat:send` is stored, or was already (a retry): the ack, with the message's wire
        form *obj*."""
        self.answer(_ACK, {"client_id": message.client_id, "message": obj}, ref)


class Call(Session):
    """One HTTP API request made as a user, answered by the same request handlers as a
    connection's request: the answer resolves `answered`, and the API turns it into an HTTP
    response.

    It has no socket (`NO_SOCKET`), so a fan-out skips nobody: every connection of the sender
    gets the message too. One call makes one request, so the limit on requests in flight and the
    error window that closes a misbehaving connection do not apply to it.
    """

    __slots__ = ("answered", "created")

    def __init__(self, user: UserId, *, limited: bool = True) -> None:
        # A call is verified when it arrives and lives for one request: its token cannot expire
        # during it in any way that matters.
        super().__init__(NO_SOCKET, Identity(user, math.inf))
        self.limited = limited
        #: The reply (its type and payload), or an `error`.
        self.answered: asyncio.Future[tuple[EventType, dict[str, Any]]] = asyncio.get_running_loop().create_future()
        #: For a send: whether the message was stored by this call (False: a retry's original).
        self.created = False

    def answer(self, kind: EventType, payload: dict[str, Any], ref: str | None) -> None:  # see Session
        if not self.answered.done():
            self.answered.set_result((kind, payload))

    def acked(self, message: StoredMessage, obj: dict[str, Any], ref: str | None) -> None:  # see Session
        self.created = message.is_new
        super().acked(message, obj, ref)

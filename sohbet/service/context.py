"""What every family of requests shares: the store, the hub, the outbox, the clock, and the ways
to answer a request.

Layer: service. Imports asyncio, the chat domain and the store interface.

A request handler is a plain function of `(session, envelope)` that runs on the event loop. One
that needs the database runs as a task (`Context.spawn`), under the session's lock so a
connection reads one thing at a time, with every error it raises turned into that request's
`error` reply (`Context.answering_errors`): a task has nobody else to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final

from sohbet.chat import wire
from sohbet.chat.hub import Hub
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.wire import Envelope, EventType
from sohbet.config import ChatConfig
from sohbet.errors import ErrorCode, MessageRejected, StoreError
from sohbet.service.session import Clock, Outbox, Session, Socket
from sohbet.store import InvalidCursor, MessageStore
from sohbet.ws.codes import CloseCode

__all__ = ["AsyncRequestHandler", "Context", "RequestHandler", "not_a_member"]

log = logging.getLogger("sohbet.chat")

#: A request handler: validates, then answers at once or starts the work that will.
RequestHandler = Callable[[Session, Envelope], None]
AsyncRequestHandler = Callable[[Session, Envelope], Awaitable[None]]

#: The errors that count toward closing a misbehaving connection (docs/protocol.md, "Errors").
CLIENT_FAULTS: Final = frozenset(
    {ErrorCode.BAD_REQUEST, ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.TOO_LARGE}
)
_ERROR_WINDOW_S: Final = 10.0
_ERROR: Final = EventType.ERROR


def not_a_member(conversation: ConversationId) -> MessageRejected:
    """The one answer for "no such conversation" and "not one of yours": nobody learns which
    conversations exist."""
    return MessageRejected(ErrorCode.FORBIDDEN, f"conversation {conversation} is not one of yours")


class Context:
    """The state and helpers the request families of one server process share."""

    def __init__(self, store: MessageStore, config: ChatConfig, outbox: Outbox, clock: Clock) -> None:
        self.store = store
        self.config = config
        self.outbox = outbox
        self.clock = clock
        self.hub: Hub[Socket] = Hub()
        #: Every task a request started; `ChatService.stop` cancels what is left.
        self.tasks: set[asyncio.Future[Any]] = set()

    def wall_ms(self) -> int:
        """Now, as the milliseconds since the epoch that timestamps are stored in."""
        return int(self.clock.wall() * 1000)

    # -- answering ----------------------------------------------------------------------------

    def reply(self, session: Session, kind: EventType, payload: dict[str, Any], ref: str | None) -> None:
        """Send a reply to the connection that asked (nothing once it has closed)."""
        if not session.closed:
            session.socket.send_text(wire.encode(kind, payload, ref))

    def error(
        self, session: Session, code: ErrorCode, message: str, ref: str | None, retry_after_ms: int | None = None
    ) -> None:
        """Answer with `error`; too many client faults in 10 s close the connection with 1008."""
        payload: dict[str, Any] = {"code": code, "message": message}
        if retry_after_ms is not None:
            payload["retry_after_ms"] = retry_after_ms
        self.reply(session, _ERROR, payload, ref)
        if code in CLIENT_FAULTS:
            now = self.clock.now()
            errors = session.errors
            errors.append(now)
            while errors[0] <= now - _ERROR_WINDOW_S:
                del errors[0]
            limit = self.config.max_errors_per_10s
            if len(errors) > limit:
                session.socket.close(CloseCode.POLICY_VIOLATION, f"more than {limit} errors in 10 s")

    def to_members(self, members: Iterable[UserId], data: bytes, *, skip: Socket | None = None) -> int:
        """Deliver an encoded event to every local connection of *members* (but *skip*)."""
        return self.outbox.deliver(self.hub.connections_of(members), data, skip=skip)

    # -- tasks --------------------------------------------------------------------------------

    def start(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run *coro* as a task that `ChatService.stop` will cancel if it is still running."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def spawn(self, handler: AsyncRequestHandler) -> RequestHandler:
        """Run a handler that reads the database as a task, mapping its errors to replies."""

        async def guarded(session: Session, envelope: Envelope) -> None:
            with self.answering_errors(session, envelope):
                async with session.lock:
                    if not session.closed:
                        await handler(session, envelope)

        def run(session: Session, envelope: Envelope) -> None:
            self.start(guarded(session, envelope))

        return run

    @contextlib.contextmanager
    def answering_errors(self, session: Session, envelope: Envelope) -> Iterator[None]:
        """Turn what a request's work raised into its `error` reply."""
        try:
            yield
        except MessageRejected as exc:
            self.error(session, exc.code, str(exc), envelope.ref, exc.retry_after_ms)
        except InvalidCursor as exc:
            self.error(session, ErrorCode.BAD_REQUEST, str(exc), envelope.ref)
        except StoreError as exc:
            log.warning("store failed on %s: %s", envelope.type, exc)
            self.error(session, ErrorCode.UNAVAILABLE, "storage is unavailable; retry", envelope.ref)
        except Exception:
            log.exception("%s failed", envelope.type)
            self.error(session, ErrorCode.INTERNAL, "internal error", envelope.ref)

    # -- membership ---------------------------------------------------------------------------

    async def member_set(self, conversation: ConversationId) -> set[UserId]:
        """The conversation's members, from the cache or loaded into it (empty if none)."""
        members = self.hub.members(conversation)
        if members is None:
            loaded = await self.store.members(conversation)
            if not loaded:
                return set()  # not cached: unknown ids must not grow the cache
            members = self.hub.set_members(conversation, loaded)
        return members

    async def require_member(self, session: Session, conversation: ConversationId) -> set[UserId]:
        """The members, if the session's user is one of them.

        Raises:
            MessageRejected: `forbidden`, for a conversation that is not the user's or does not exist.
        """
        members = await self.member_set(conversation)
        if session.user not in members:
            raise not_a_member(conversation)
        return members

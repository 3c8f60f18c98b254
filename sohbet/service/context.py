"""What every family of requests shares: the store, the hub, the outbox, the clock, and the ways
to answer a request.

Layer: service. Imports asyncio, the chat domain and the store interface.

A request handler is a plain function of `(session, envelope)` that runs on the event loop. One
that needs the database runs as a task (`Context.spawn`), under the session's lock so a
connection reads one thing at a time, with every error it raises turned into that request's
`error` reply (`Context.answering_errors`): a task has nobody else to tell. A connection may have
only a few such requests waiting at once (`max_requests_in_flight`): each holds its envelope.

Every request also spends a token from its user's bucket for that request type (`Context.spend`),
after it has been validated and checked against membership, so refused requests cost nothing.

Membership is checked from the hub's caches; what they do not hold is loaded once however many
requests ask at the same moment, and a user's conversations are loaded before a conversation's
members, so a user probing conversations that are not theirs never loads anyone's members.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from sohbet.chat.hub import Hub
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.config import ChatConfig
from sohbet.errors import ErrorCode, MessageRejected, StoreError
from sohbet.service.session import Clock, Notifier, Outbox, Session, Socket
from sohbet.service.stats import ChatStats
from sohbet.store import InvalidCursor, MessageStore
from sohbet.ws.codes import CloseCode
from sohbet.ws.rates import Rate, RateLimiter

if TYPE_CHECKING:
    from sohbet.service.cluster import Cluster

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
#: What a connection over its requests in flight is told to wait: about one storage round trip.
IN_FLIGHT_RETRY_MS: Final = 100
_MAX_LOGGED_BUGS: Final = 1000  # distinct places; beyond that a flood of new ones is only counted


def not_a_member(conversation: ConversationId) -> MessageRejected:
    """The one answer for "no such conversation" and "not one of yours": nobody learns which
    conversations exist."""
    return MessageRejected(ErrorCode.FORBIDDEN, f"conversation {conversation} is not one of yours")


class Context:
    """The state and helpers the request families of one server process share."""

    def __init__(
        self,
        store: MessageStore,
        config: ChatConfig,
        outbox: Outbox,
        clock: Clock,
        notifier: Notifier | None = None,
        *,
        clustered: bool = False,
    ) -> None:
        self.store = store
        self.config = config
        self.outbox = outbox
        self.clock = clock
        #: Told of each new message's members who had no connection (the webhook), if any.
        self.notifier = notifier
        self.hub: Hub[Socket] = Hub(config.member_cache_size, track_here=clustered)
        #: The other instances, if any (`ChatService` sets it).
        self.cluster: Cluster
        self.limiter: RateLimiter[tuple[UserId, str]] = RateLimiter()
        #: The bucket each request type spends from (the `chat:send` one is the writer's).
        self.rates: dict[str, Rate] = {
            **dict.fromkeys((RequestType.CREATE, RequestType.LEAVE, RequestType.REFRESH), config.create_rate),
            **dict.fromkeys(
                (RequestType.HISTORY, RequestType.LIST, RequestType.MEMBERS, RequestType.PRESENCE),
                config.query_rate,
            ),
            RequestType.SYNC: config.sync_rate,
            **dict.fromkeys((RequestType.TYPING, RequestType.READ), config.signal_rate),
            RequestType.SEND: config.send_rate,
        }
        #: Every task a request started; `ChatService.stop` cancels what is left.
        self.tasks: set[asyncio.Future[Any]] = set()
        self._member_loads: dict[ConversationId, asyncio.Future[set[UserId]]] = {}
        self._conversation_loads: dict[UserId, asyncio.Future[set[ConversationId]]] = {}
        #: What the service counts, for the metrics endpoint.
        self.stats = ChatStats()
        #: Whether storage answered last time it was asked; its changes are logged once each.
        self.storage_up = True
        #: `internal` answers so far (each a bug); a traceback is logged once per place.
        self.internal_errors = 0
        self._logged_bugs: set[tuple[str, str, int]] = set()

    def sizes(self) -> dict[str, int]:
        """How many entries the service's own tables hold (read-only, for `/metrics`): rate
        buckets (dropped once full again), loads and tasks in flight, and the places whose bug
        was logged (bounded by design: at most 1000)."""
        return {
            "rate_buckets": len(self.limiter),
            "member_loads_in_flight": len(self._member_loads),
            "conversation_loads_in_flight": len(self._conversation_loads),
            "tasks": len(self.tasks),
            "logged_bugs": len(self._logged_bugs),
        }

    def storage_failed(self, exc: BaseException) -> None:
        """Storage did not answer: logged when it goes down, not at every failure meanwhile."""
        if self.storage_up:
            self.storage_up = False
            log.error("storage is down: %s", exc)

    def storage_answered(self) -> None:
        """Storage answered: logged when it comes back."""
        if not self.storage_up:
            self.storage_up = True
            log.warning("storage is back")

    def wall_ms(self) -> int:
        """Now, as the milliseconds since the epoch that timestamps are stored in."""
        return int(self.clock.wall() * 1000)

    # -- answering ----------------------------------------------------------------------------

    def reply(self, session: Session, kind: EventType, payload: dict[str, Any], ref: str | None) -> None:
        """Answer the session that asked (a connection: nothing once it has closed)."""
        session.answer(kind, payload, ref)

    def error(
        self, session: Session, code: ErrorCode, message: str, ref: str | None, retry_after_ms: int | None = None
    ) -> None:
        """Answer with `error`; too many client faults in 10 s close the connection with 1008."""
        self.stats.errors[code] += 1
        payload: dict[str, Any] = {"code": code, "message": message}
        if retry_after_ms is not None:
            payload["retry_after_ms"] = retry_after_ms
        self.reply(session, _ERROR, payload, ref)
        if code in CLIENT_FAULTS:
            now = self.clock.now()
            errors = session.errors
            if errors is None:
                errors = session.errors = []
            errors.append(now)
            while errors[0] <= now - _ERROR_WINDOW_S:
                del errors[0]
            limit = self.config.max_errors_per_10s
            if len(errors) > limit:
                session.socket.close(CloseCode.POLICY_VIOLATION, f"more than {limit} errors in 10 s")

    def spend(self, session: Session, kind: str) -> None:
        """Spend a token of the user's bucket for *kind* (a request type).

        Raises:
            MessageRejected: `rate_limited`, with the milliseconds until a token is available.
        """
        if not session.limited:
            return  # the application's backend, acting for the user
        rate = self.rates[kind]
        wait_ms = self.limiter.take((session.user, kind), self.clock.now(), rate)
        if wait_ms:
            raise MessageRejected(
                ErrorCode.RATE_LIMITED, f"more than {rate.per_s:g} {kind} per second", retry_after_ms=wait_ms
            )

    def refund(self, session: Session, kind: str) -> None:
        """Give back the token a request spent when it turned out to cost nothing."""
        if session.limited:  # an unlimited session spent none
            self.limiter.refund((session.user, kind), self.rates[kind])

    def to_members(self, members: Iterable[UserId], data: bytes, *, skip: Socket | None = None) -> int:
        """Deliver an encoded event to every local connection of *members* (but *skip*)."""
        return self.to_sockets(self.hub.connections_of(members), data, skip=skip)

    def to_sockets(self, sockets: Sequence[Socket], data: bytes, *, skip: Socket | None = None) -> int:
        """Deliver an encoded event to *sockets* (but *skip*), counted."""
        sent = self.outbox.deliver(sockets, data, skip=skip)
        self.stats.deliveries += sent
        return sent

    # -- tasks --------------------------------------------------------------------------------

    def start(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run *coro* as a task that `ChatService.stop` will cancel if it is still running."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def start_request(self, session: Session, coro: Coroutine[Any, Any, None]) -> None:
        """Run a request's work as a task, counted against the connection's requests in flight.

        Raises:
            MessageRejected: `rate_limited` when the connection has as many waiting as allowed.
        """
        limit = self.config.max_requests_in_flight
        if limit and session.in_flight >= limit:
            coro.close()  # never started: close it, or Python warns it was never awaited
            raise MessageRejected(
                ErrorCode.RATE_LIMITED, f"more than {limit} requests in flight", retry_after_ms=IN_FLIGHT_RETRY_MS
            )
        session.in_flight += 1
        self.start(coro).add_done_callback(lambda _: _finished(session))

    def spawn(self, handler: AsyncRequestHandler) -> RequestHandler:
        """Run a handler that reads the database as a task, mapping its errors to replies."""

        async def guarded(session: Session, envelope: Envelope) -> None:
            with self.answering_errors(session, envelope):
                lock = session.lock
                if lock is None:
                    lock = session.lock = asyncio.Lock()
                async with lock:
                    if not session.closed:
                        await handler(session, envelope)

        def run(session: Session, envelope: Envelope) -> None:
            self.start_request(session, guarded(session, envelope))

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
            self.storage_failed(exc)
            self.error(session, ErrorCode.UNAVAILABLE, "storage is unavailable; retry", envelope.ref)
        except Exception as exc:
            self.bug(envelope.type, exc)
            self.error(session, ErrorCode.INTERNAL, "internal error", envelope.ref)

    def bug(self, what: str, exc: BaseException) -> None:
        """Count an `internal` answer; log its traceback the first time it happens at that place,
        so no client can fill the log by repeating whatever triggers it."""
        self.internal_errors += 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        place = (what[:64], type(exc).__name__, tb.tb_lineno if tb is not None else 0)
        if place not in self._logged_bugs and len(self._logged_bugs) < _MAX_LOGGED_BUGS:
            self._logged_bugs.add(place)
            log.error("%s failed (logged once; later ones are only counted)", place[0], exc_info=exc)

    # -- membership ---------------------------------------------------------------------------

    async def member_set(self, conversation: ConversationId) -> set[UserId]:
        """The conversation's members, from the cache or loaded into it (empty if none).

        Only for a conversation already known to be the caller's: see `require_member`.
        """
        members = self.hub.members(conversation)
        if members is not None:
            return members
        loading = self._member_loads.get(conversation)
        if loading is None:
            loading = self._member_loads[conversation] = asyncio.ensure_future(self._load_members(conversation))
            loading.add_done_callback(lambda _: self._member_loads.pop(conversation, None))
            loading.add_done_callback(_seen)
        try:
            return await asyncio.shield(loading)  # one waiter cancelled must not cancel the others' load
        finally:
            del loading  # a failed load's error, raised through this frame, would hold it in a cycle

    async def _load_members(self, conversation: ConversationId) -> set[UserId]:
        hub = self.hub
        hub.begin_members_load(conversation)
        try:
            loaded = await self.store.members(conversation)
        except BaseException:
            hub.abandon_members_load(conversation)
            raise
        return hub.finish_members_load(conversation, loaded)

    async def conversations_of(self, user: UserId) -> set[ConversationId]:
        """The user's conversations, from the cache or loaded (kept while the user is online)."""
        convs = self.hub.conversations(user)
        if convs is not None:
            return convs
        loading = self._conversation_loads.get(user)
        if loading is None:
            loading = self._conversation_loads[user] = asyncio.ensure_future(self._load_conversations(user))
            loading.add_done_callback(lambda _: self._conversation_loads.pop(user, None))
            loading.add_done_callback(_seen)
        try:
            return await asyncio.shield(loading)
        finally:
            del loading  # as in member_set

    async def _load_conversations(self, user: UserId) -> set[ConversationId]:
        hub = self.hub
        hub.begin_conversations_load(user)
        try:
            loaded = await self.store.conversation_ids(user)
        except BaseException:
            hub.abandon_conversations_load(user)
            raise
        return hub.finish_conversations_load(user, loaded, keep=hub.is_online(user))

    async def require_member(self, session: Session, conversation: ConversationId) -> None:
        """Check that the session's user is a member, without loading the conversation's members.

        Raises:
            MessageRejected: `forbidden`, for a conversation that is not the user's or does not exist.
        """
        known = self.hub.is_member(session.user, conversation)
        if known is None:
            known = conversation in await self.conversations_of(session.user)
        if not known:
            raise not_a_member(conversation)


def _seen(load: asyncio.Future[Any]) -> None:
    """Mark a shared load's failure as seen: every waiter still there gets it through its shield,
    and one whose waiters were all cancelled (a shutdown) ended as expected, which asyncio would
    otherwise log with a traceback as an exception never retrieved."""
    if not load.cancelled():
        load.exception()


def _finished(session: Session) -> None:
    session.in_flight -= 1

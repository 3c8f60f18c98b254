"""The chat service: connections open and close, requests come in and go to their family.

Layer: service. Imports asyncio, the chat domain, `sohbet.auth` and the store interface (never
a concrete store: `sohbet.app` picks one). Connections reach it as `Socket`s, and events leave
through an `Outbox` that frames a message once for all its recipients.

Each family of requests is a module with a class that registers its handlers (`handlers()`):
messaging (send, typing, read, history), sync, conversations, presence. `ChatService` composes
them around one shared `Context`, and adds what concerns a connection as a whole: `hello`, the
connection limit per user, token expiry and `auth:refresh`, and the once-per-half-second tick.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from sohbet.auth import Identity, Verifier
from sohbet.broker import Broker
from sohbet.chat import wire
from sohbet.chat.hub import Hub
from sohbet.chat.ids import ConnId, UserId
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.config import ChatConfig
from sohbet.errors import AuthError, ErrorCode, MessageRejected, StoreError
from sohbet.service.cluster import Cluster
from sohbet.service.context import Context, RequestHandler
from sohbet.service.conversations import Conversations
from sohbet.service.messaging import Messaging
from sohbet.service.presence import Presence
from sohbet.service.session import Call, Clock, LoopClock, Notifier, Outbox, Session, Socket
from sohbet.service.sync import Sync
from sohbet.service.tokens import VerifiedTokens
from sohbet.service.writer import Writer
from sohbet.store import MessageStore
from sohbet.ws.codes import CloseCode

__all__ = ["ChatService"]

log = logging.getLogger("sohbet.chat")

_TICK_S: Final = 0.5
_ERROR: Final = EventType.ERROR
#: Messages a connection may send before its `hello` (while a cluster admits it).
MAX_EARLY: Final = 32
#: ... and bytes (a waiting connection holds them: admission waits on storage and Redis).
MAX_EARLY_BYTES: Final = 64 * 1024


class _NoBroker:
    """No other instance (`broker=None`): what `sohbet.broker.local.LocalBroker` does, without
    the service importing a concrete broker."""

    instance_id = "single"
    clustered = False
    up = True

    def send(self, header: dict[str, Any], data: bytes) -> None:
        pass


_NO_BROKER: Any = _NoBroker()


class ChatService:
    """Protocol v1 (docs/protocol.md) for the connections of one server process."""

    def __init__(
        self,
        store: MessageStore,
        config: ChatConfig,
        verifier: Verifier,
        outbox: Outbox,
        *,
        max_message_bytes: int,
        leeway_s: float,
        max_batch: int = 512,
        max_queue: int = 20_000,
        writers: int = 1,
        depth: int = 1,
        gather_s: float = 0.0,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        broker: Broker | None = None,
    ) -> None:
        clustered = broker is not None and broker.clustered
        self.ctx = Context(store, config, outbox, clock or LoopClock(), notifier, clustered=clustered)
        self.verifier = verifier
        self._tokens = VerifiedTokens(verifier, self.ctx.clock, leeway_s)
        self.max_message_bytes = max_message_bytes
        self.leeway_s = leeway_s
        self.writer = Writer(
            self.ctx, max_batch=max_batch, max_queue=max_queue, writers=writers, depth=depth, gather_s=gather_s
        )
        self.presence = Presence(self.ctx)
        self.broker = broker
        self.cluster = self.ctx.cluster = Cluster(
            self.ctx, broker or _NO_BROKER, self.presence.came_online_elsewhere, self.close_user
        )
        self._sessions: dict[ConnId, Session] = {}
        #: Users with connections whose admission is under way: in a cluster until the broker has
        #: counted them and their conversations are followed (`_admit`, before `hello`); on one
        #: instance until their user's conversations are loaded (just after `hello`). Each holds
        #: a storage read, so the gateway sheds upgrades beyond `max_admitting` (`is_admitting_full`).
        self.admitting = 0
        self._admitting_users: dict[UserId, int] = {}  # admissions under way per user counted
        self._ticker: asyncio.Task[None] | None = None
        self._log_reader: asyncio.Task[None] | None = None  # a cluster's (`Cluster.follow_membership_log`)
        self.conversations = Conversations(self.ctx)
        families: list[dict[RequestType, RequestHandler]] = [
            Messaging(self.ctx, self.writer).handlers(),
            Sync(self.ctx).handlers(),
            self.conversations.handlers(),
            self.presence.handlers(),
            {RequestType.REFRESH: self._refresh},
        ]
        # Keyed by the plain string: the envelope's type is one, and str keys look up fastest.
        self.handlers: dict[str, RequestHandler] = {}
        for family in families:
            for kind, handler in family.items():
                if kind.value in self.handlers:
                    raise ValueError(f"{kind.value} has two handlers")
                self.handlers[kind.value] = handler

    @property
    def store(self) -> MessageStore:
        """Where messages are kept."""
        return self.ctx.store

    @property
    def hub(self) -> Hub[Socket]:
        """Who is connected, and who belongs where."""
        return self.ctx.hub

    @property
    def session_count(self) -> int:
        """Open sessions on this instance."""
        return len(self._sessions)

    @property
    def verified_token_count(self) -> int:
        """Tokens remembered as verified (capped: `service.tokens.MAX_REMEMBERED`)."""
        return len(self._tokens)

    @property
    def is_admitting_full(self) -> bool:
        """Whether `max_admitting` users' connections are being admitted: a new upgrade is refused."""
        limit = self.ctx.config.max_admitting
        return 0 < limit <= self.admitting

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and the ticker, and link up with the other instances."""
        self.writer.start()
        self._ticker = asyncio.ensure_future(self._tick_loop())
        if self.broker is not None:
            await self.broker.start(self.cluster)
        if self.cluster.active:
            self._log_reader = asyncio.ensure_future(self.cluster.follow_membership_log())

    async def stop(self) -> None:
        """Commit what is queued, then stop; requests still reading are cancelled."""
        await self.writer.stop()
        if self.broker is not None:
            await self.broker.stop()
        tasks = self.ctx.tasks
        for task in (self._ticker, self._log_reader, *tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*tasks, *[t for t in (self._log_reader,) if t is not None], return_exceptions=True)

    def abandon(self) -> None:
        """Stop at once, committing nothing more: for a shutdown out of time (storage hangs)."""
        for task in (self._ticker, self._log_reader, *self.ctx.tasks, *self.writer.tasks):
            if task is not None:
                task.cancel()

    # -- connections --------------------------------------------------------------------------

    def open(self, socket: Socket, identity: Identity) -> Session | None:
        """A connection authenticated and upgraded: say hello and announce presence.

        Returns None (and closes the connection with 1008) when the user already holds the
        maximum number of connections; their older connections stay open.
        """
        ctx = self.ctx
        cfg = ctx.config
        if len(ctx.hub.connections(identity.user_id)) >= cfg.max_connections_per_user:
            limit = cfg.max_connections_per_user
            socket.close(CloseCode.POLICY_VIOLATION, f"more than {limit} connections for this user")
            return None
        session = Session(socket, identity)
        self._sessions[ConnId(socket.id)] = session
        if self.cluster.active:
            session.early = []  # hello waits until the cluster admits the connection
            self._count_admission(session.user, ctx.start(self._admit(session)))
        else:
            loading = self._welcome(session)
            if loading is not None and ctx.hub.conversations(session.user) is None:  # it reads storage
                self._count_admission(session.user, loading)
        return session

    def _count_admission(self, user: UserId, task: asyncio.Future[None]) -> None:
        """Count *user* as being admitted until *task* (a connection's admission, or on one
        instance its user's conversation load) ends, however it ends: counted at once (two
        upgrades in one loop turn must both see it), uncounted by the task's done callback,
        which runs even for a task cancelled before its first step. A user counts once however
        many of their connections are being admitted: their reads are shared, and one user
        opening and closing connections during a slow read must not fill the limit for everyone
        (an admission outlives a connection closed meanwhile). The task's owner logs its failures."""
        pending = self._admitting_users.get(user, 0)
        self._admitting_users[user] = pending + 1
        if not pending:
            self.admitting += 1
        task.add_done_callback(lambda _: self._admission_ended(user))

    def _admission_ended(self, user: UserId) -> None:
        pending = self._admitting_users.pop(user) - 1
        if pending:
            self._admitting_users[user] = pending
        else:
            self.admitting -= 1

    async def _admit(self, session: Session) -> None:
        limit = self.ctx.config.max_connections_per_user
        try:
            async with self.cluster.admitting(session) as admitted:
                if not admitted:
                    session.socket.close(CloseCode.POLICY_VIOLATION, f"more than {limit} connections for this user")
                    return
                if session.closed:
                    return  # closed while it was admitted (`closed` released it)
                early, session.early = session.early or [], None
                self._welcome(session)
        except StoreError as exc:
            self.ctx.storage_failed(exc)
            self.ctx.hub.forget(session.user)
            session.socket.close(CloseCode.INTERNAL_ERROR, "storage is unavailable; reconnect")
            return
        except Exception as exc:  # a bug: the connection must not hang without its hello
            self.ctx.bug("admission", exc)
            self.ctx.hub.forget(session.user)
            session.socket.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        for data in early:
            self.received(session, data)

    def close_user(self, user: UserId, code: int, reason: str) -> int:
        """Close every connection of *user* on this instance, those still being admitted too;
        return how many."""
        sockets = list(self.ctx.hub.connections(user))
        sockets += [s.socket for s in self._sessions.values() if s.user == user and s.early is not None]
        for socket in sockets:
            socket.close(code, reason)
        return len(sockets)

    def _welcome(self, session: Session) -> asyncio.Future[None] | None:
        """Attach the connection, say hello, announce the user if they came online.

        Returns:
            The task loading the user's conversations and announcing them, if one was started.
        """
        ctx = self.ctx
        cfg = ctx.config
        socket = session.socket
        came_online = ctx.hub.attach(session.user, socket)
        hello = {
            "user_id": session.user,
            "connection_id": str(socket.id),
            "server_time": wire.format_time(ctx.wall_ms()),
            "protocol": wire.PROTOCOL_VERSION,
            "limits": {
                "max_message_bytes": self.max_message_bytes,
                "max_content_chars": cfg.max_content_chars,
                "send_rate_per_s": cfg.send_rate_per_s,
                "send_burst": cfg.send_burst,
            },
        }
        socket.send_text(wire.encode(EventType.HELLO, hello))
        return self.presence.connected(session.user, came_online)

    def closed(self, session: Session) -> None:
        """The connection is gone: the user stays online for the grace period if it was their last."""
        session.closed = True
        self._sessions.pop(ConnId(session.socket.id), None)
        ctx = self.ctx
        ctx.hub.detach(session.user, session.socket, ctx.clock.now() + ctx.config.presence_grace_s)
        if session.admitted:
            self.cluster.release(session)
            self.cluster.reconcile_soon()

    def received(self, session: Session, data: bytes) -> None:
        """One text message from a client."""
        ctx = self.ctx
        if session.early is not None:  # before hello: handled once the connection is admitted
            early = session.early
            if len(early) >= MAX_EARLY or sum(map(len, early)) + len(data) > MAX_EARLY_BYTES:
                session.socket.close(CloseCode.POLICY_VIOLATION, f"more than {MAX_EARLY} messages before hello")
            else:
                early.append(data)
            return
        try:
            envelope = wire.decode(data)
        except MessageRejected as exc:
            ctx.error(session, exc.code, str(exc), exc.ref)
            return
        handler = self.handlers.get(envelope.type)
        received = ctx.stats.received
        if handler is None:
            received["unknown"] += 1
            ctx.error(session, ErrorCode.BAD_REQUEST, f"unknown type {envelope.type[:64]!r}", envelope.ref)
            return
        received[envelope.type] += 1
        try:
            handler(session, envelope)
        except MessageRejected as exc:
            ctx.error(session, exc.code, str(exc), envelope.ref, exc.retry_after_ms)

    async def request(self, call: Call, kind: RequestType, payload: dict[str, Any]) -> dict[str, Any]:
        """Handle one request of an HTTP API call exactly as a connection's (`received`), and
        wait for its answer: the same validation, membership rules, rate limits and storage.

        Returns:
            The payload of the reply (for `chat:send`, of the ack, sent once the message is stored).

        Raises:
            MessageRejected: the `error` the request was answered with.
        """
        ctx = self.ctx
        try:
            self.handlers[kind](call, Envelope(kind, payload, None))
        except MessageRejected as exc:
            ctx.error(call, exc.code, str(exc), None, exc.retry_after_ms)
        answered, reply = await call.answered
        if answered == _ERROR:
            raise MessageRejected(ErrorCode(reply["code"]), reply["message"], reply.get("retry_after_ms"))
        return reply

    # -- tokens and time ----------------------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """Verify a token for a new connection (the gateway calls this before the upgrade) or
        an HTTP API call; one that verified lately is remembered (`service/tokens.py`).

        Raises:
            AuthError: the token is refused.
        """
        return self._tokens.verify(token)

    def _refresh(self, session: Session, envelope: Envelope) -> None:
        token = wire.token_of(envelope.payload)
        # Spent before the signature check, which is the cost; a refused token gets it back
        # (and counts toward the client-fault errors that close the connection).
        self.ctx.spend(session, RequestType.REFRESH)
        try:
            identity = self.verifier.verify(token)
            if identity.user_id != session.user:
                raise MessageRejected(ErrorCode.UNAUTHORIZED, "the new token is for another user")
        except AuthError as exc:
            self.ctx.refund(session, RequestType.REFRESH)
            raise MessageRejected(ErrorCode.UNAUTHORIZED, str(exc)) from None
        except MessageRejected:
            self.ctx.refund(session, RequestType.REFRESH)
            raise
        session.exp = identity.exp
        self.ctx.reply(session, EventType.REFRESHED, {"exp": int(identity.exp)}, envelope.ref)

    async def _tick_loop(self) -> None:
        clock = self.ctx.clock
        while True:
            await asyncio.sleep(_TICK_S)
            try:
                self.tick(clock.wall(), clock.now())
            except Exception:
                log.exception("chat tick failed")

    def tick(self, wall: float, now: float) -> None:
        """Expire tokens (close 4001), end grace periods (`user:offline`), forget stale state."""
        # A scan, not a heap: nothing to forget when a session closes or refreshes, and 10,000
        # sessions take about a millisecond every half second.
        deadline = wall - self.leeway_s
        for session in [s for s in self._sessions.values() if s.exp <= deadline]:
            session.socket.close(CloseCode.TOKEN_EXPIRED, "token expired")
        self.presence.end_graces(now)
        hub = self.ctx.hub
        cfg = self.ctx.config
        hub.forget_typing(now - cfg.typing_interval_s)
        self.ctx.limiter.forget(now)
        self.cluster.reconcile_soon()
        self.cluster.sweep_soon()

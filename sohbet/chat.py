"""The chat service: protocol v1 requests in, storage and hub updates, replies and events out.

Layer: service. Imports the core, asyncio and the `sohbet.store` interface (never a concrete
store: `cli.py` picks one). Connections reach it as `Client`s, and events leave through an
`Outbox` that frames a message once for all its recipients.

Reads that need the database run as tasks; a `chat:send` never does. It is validated against
cached membership and the user's rate bucket, queued, and written by one writer task in batches
(group commit), which acks each sender and fans each message out in seq order once its batch
has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, Protocol

from sohbet import messages as m
from sohbet.auth import Identity, UserId, Verifier
from sohbet.config import ChatConfig
from sohbet.errors import AuthError, MessageRejected, StoreError, StoreUnavailable
from sohbet.hub import Hub
from sohbet.messages import ConversationId
from sohbet.store import Conversation, InvalidCursor, MessageStore, NewMessage, StoredMessage

__all__ = ["ChatService", "Client", "Outbox", "Session"]

log = logging.getLogger("sohbet.chat")

CLIENT_FAULTS: Final = frozenset({"bad_request", "unauthorized", "forbidden", "too_large"})
_TICK_S: Final = 0.5
_ERROR_WINDOW_S: Final = 10.0


class Client(Protocol):
    """A connection as the chat service sees it; the server's `WebSocket` is one."""

    @property
    def id(self) -> int: ...
    def send_text(self, data: str | bytes) -> None: ...
    def close(self, code: int = 1000, reason: str = "") -> None: ...
    async def drained(self) -> None: ...


class Outbox(Protocol):
    """Delivers one encoded message to many clients (all but *skip*), framing it once."""

    def deliver(self, clients: Iterable[Client], data: bytes, *, skip: Client | None = None) -> int: ...


class Session:
    """The chat state of one connection."""

    __slots__ = ("client", "closed", "errors", "exp", "lock", "user")

    def __init__(self, client: Client, identity: Identity) -> None:
        self.client = client
        self.user = identity.user_id
        self.exp = identity.exp
        #: When the latest client-fault errors happened: a sliding 10 s window.
        self.errors: list[float] = []  # at most max_errors_per_10s + 1 long
        #: Serialises this connection's reads (sync, history, ...): one at a time holds memory.
        self.lock = asyncio.Lock()
        self.closed = False


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not load a user's contacts: %s", task.exception())


def _conversation_object(c: Conversation, with_unread: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": c.id,
        "kind": c.kind,
        "title": c.title,
        "member_count": c.member_count,
        "members": c.members,
        "last_seq": c.last_seq,
    }
    if with_unread:
        obj["unread"] = c.unread
    return obj


class ChatService:
    """Protocol v1 (PROTOCOL.md) for the connections of one server process."""

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
    ) -> None:
        self.store = store
        self.config = config
        self.verifier = verifier
        self.outbox = outbox
        self.hub: Hub[Client] = Hub()
        self.max_message_bytes = max_message_bytes
        self.leeway_s = leeway_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.depth = depth
        self._sessions: dict[int, Session] = {}
        # One queue and one writer task per shard; a conversation always maps to the same shard,
        # so its messages commit and fan out in seq order, while other conversations commit in
        # parallel (a database like Postgres then flushes their commits together).
        self._queues: list[list[tuple[Session, str | None, NewMessage]]] = [[] for _ in range(writers)]
        self._wakes = [asyncio.Event() for _ in range(writers)]
        self._queued = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loading: dict[UserId, asyncio.Future[None]] = {}
        self._writers: list[asyncio.Task[None]] = []
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        self.handlers: dict[str, Callable[[Session, m.Envelope], None]] = {
            "chat:send": self._send,
            "chat:typing": self._typing,
            "chat:read": self._spawn(self._read),
            "chat:history": self._spawn(self._history),
            "sync": self._spawn(self._sync),
            "conversation:create": self._spawn(self._create),
            "conversation:list": self._spawn(self._list),
            "conversation:members": self._spawn(self._members_page),
            "conversation:leave": self._spawn(self._leave),
            "presence:query": self._spawn(self._presence),
            "auth:refresh": self._refresh,
        }

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer and the ticker."""
        self._writers = [asyncio.ensure_future(self._write_loop(shard)) for shard in range(len(self._queues))]
        self._ticker = asyncio.ensure_future(self._tick_loop())

    async def stop(self) -> None:
        """Commit what is queued, then stop; requests still reading are cancelled."""
        self._stopping = True
        for wake in self._wakes:
            wake.set()
        await asyncio.gather(*self._writers)
        for task in (self._ticker, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def session_count(self) -> int:
        """Open sessions on this instance."""
        return len(self._sessions)

    # -- connections --------------------------------------------------------------------------

    def open(self, client: Client, identity: Identity) -> Session | None:
        """A connection authenticated and upgraded: say hello and announce presence.

        Returns None (and closes the connection with 1008) when the user already holds the
        maximum number of connections; their older connections stay open.
        """
        hub = self.hub
        if len(hub.connections(identity.user_id)) >= self.config.max_connections_per_user:
            client.close(1008, f"more than {self.config.max_connections_per_user} connections for this user")
            return None
        session = Session(client, identity)
        self._sessions[client.id] = session
        came_online = hub.attach(session.user, client)
        cfg = self.config
        client.send_text(
            m.encode(
                "hello",
                {
                    "user_id": session.user,
                    "connection_id": str(client.id),
                    "server_time": m.format_time(int(time.time() * 1000)),
                    "protocol": 1,
                    "limits": {
                        "max_message_bytes": self.max_message_bytes,
                        "max_content_chars": cfg.max_content_chars,
                        "send_rate_per_s": cfg.send_rate_per_s,
                        "send_burst": cfg.send_burst,
                    },
                },
            )
        )
        if came_online or hub.conversations(session.user) is None:
            self._load_contacts(session.user, announce=came_online)
        return session

    def _load_contacts(self, user: UserId, *, announce: bool) -> asyncio.Future[None]:
        """Load a user's conversations and their members (once, however many ask), then
        announce the user to their contacts if they have just come online."""
        loading = self._loading.get(user)
        if loading is None or loading.done():
            loading = self._loading[user] = asyncio.ensure_future(self._came_online(user, announce=announce))
            self._tasks.add(loading)
            loading.add_done_callback(self._tasks.discard)
            loading.add_done_callback(lambda _: self._loading.pop(user, None))
            loading.add_done_callback(_log_failure)
        return loading

    def closed(self, session: Session) -> None:
        """The connection is gone: the user stays online for the grace period if it was their last."""
        session.closed = True
        self._sessions.pop(session.client.id, None)
        now = asyncio.get_running_loop().time()
        self.hub.detach(session.user, session.client, now + self.config.presence_grace_s)

    def received(self, session: Session, data: bytes) -> None:
        """One text message from a client."""
        try:
            envelope = m.decode(data)
        except MessageRejected as exc:
            self._error(session, exc.code, str(exc), exc.ref)
            return
        handler = self.handlers.get(envelope.type)
        if handler is None:
            self._error(session, "bad_request", f"unknown type {envelope.type[:64]!r}", envelope.ref)
            return
        try:
            handler(session, envelope)
        except MessageRejected as exc:
            self._error(session, exc.code, str(exc), envelope.ref, exc.retry_after_ms)

    # -- replies ------------------------------------------------------------------------------

    def _reply(self, session: Session, kind: str, payload: dict[str, Any], ref: str | None) -> None:
        if not session.closed:
            session.client.send_text(m.encode(kind, payload, ref))

    def _error(
        self, session: Session, code: str, message: str, ref: str | None, retry_after_ms: int | None = None
    ) -> None:
        payload: dict[str, Any] = {"code": code, "message": message}
        if retry_after_ms is not None:
            payload["retry_after_ms"] = retry_after_ms
        self._reply(session, "error", payload, ref)
        if code in CLIENT_FAULTS:
            now = asyncio.get_running_loop().time()
            errors = session.errors
            errors.append(now)
            while errors[0] <= now - _ERROR_WINDOW_S:
                del errors[0]
            if len(errors) > self.config.max_errors_per_10s:
                session.client.close(1008, f"more than {self.config.max_errors_per_10s} errors in 10 s")

    def _to_members(self, members: Iterable[UserId], data: bytes, *, skip: Client | None = None) -> int:
        return self.outbox.deliver(self.hub.connections_of(members), data, skip=skip)

    # -- tasks --------------------------------------------------------------------------------

    def _start(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(
        self, handler: Callable[[Session, m.Envelope], Awaitable[None]]
    ) -> Callable[[Session, m.Envelope], None]:
        """Run a handler that reads the database as a task, mapping its errors to replies."""

        async def guarded(session: Session, envelope: m.Envelope) -> None:
            with self._answering_errors(session, envelope):
                async with session.lock:
                    if not session.closed:
                        await handler(session, envelope)

        return lambda session, envelope: self._start(guarded(session, envelope))

    @contextlib.contextmanager
    def _answering_errors(self, session: Session, envelope: m.Envelope) -> Iterator[None]:
        """Turn what a request's work raised into its `error` reply: a task has nobody else to tell."""
        try:
            yield
        except MessageRejected as exc:
            self._error(session, exc.code, str(exc), envelope.ref, exc.retry_after_ms)
        except InvalidCursor as exc:
            self._error(session, "bad_request", str(exc), envelope.ref)
        except StoreError as exc:
            log.warning("store failed on %s: %s", envelope.type, exc)
            self._error(session, "unavailable", "storage is unavailable; retry", envelope.ref)
        except Exception:
            log.exception("%s failed", envelope.type)
            self._error(session, "internal", "internal error", envelope.ref)

    async def _member_set(self, conversation: ConversationId) -> set[UserId]:
        """The conversation's members, from the cache or loaded into it (empty if none)."""
        members = self.hub.members(conversation)
        if members is None:
            loaded = await self.store.members(conversation)
            if not loaded:
                return set()  # not cached: unknown ids must not grow the cache
            members = self.hub.set_members(conversation, loaded)
        return members

    async def _require_member(self, session: Session, conversation: ConversationId) -> set[UserId]:
        members = await self._member_set(conversation)
        if session.user not in members:
            # Same answer for "no such conversation" and "not yours": nobody learns which exist.
            raise MessageRejected("forbidden", f"conversation {conversation} is not one of yours")
        return members

    # -- chat:send and the writer -------------------------------------------------------------

    def _send(self, session: Session, envelope: m.Envelope) -> None:
        request = m.SendRequest.parse(envelope.payload, self.config.max_content_chars)
        members = self.hub.members(request.conversation_id)
        if members is None:
            self._start(self._send_after_loading(session, envelope, request))
            return
        self._enqueue(session, envelope.ref, request, members)

    async def _send_after_loading(self, session: Session, envelope: m.Envelope, request: m.SendRequest) -> None:
        with self._answering_errors(session, envelope):
            self._enqueue(session, envelope.ref, request, await self._member_set(request.conversation_id))

    def _enqueue(self, session: Session, ref: str | None, request: m.SendRequest, members: set[UserId]) -> None:
        if session.user not in members:
            raise MessageRejected("forbidden", f"conversation {request.conversation_id} is not one of yours")
        cfg = self.config
        wait_ms = self.hub.take_send_token(
            session.user, asyncio.get_running_loop().time(), cfg.send_rate_per_s, cfg.send_burst
        )
        if wait_ms:
            # A retry of a stored message is answered even when the bucket is empty: replays
            # spend no token. Finding out needs the database, so only this path pays for it.
            self._start(self._limited_or_replay(session, ref, request, wait_ms))
            return
        if self._queued >= self.max_queue or self._stopping:
            self.hub.refund_send_token(session.user, cfg.send_burst)
            raise MessageRejected("unavailable", "too many messages waiting to be stored; retry")
        shard = request.conversation_id % len(self._queues)
        self._queues[shard].append(
            (session, ref, NewMessage(request.conversation_id, session.user, request.client_id, request.content))
        )
        self._queued += 1
        self._wakes[shard].set()

    async def _limited_or_replay(self, session: Session, ref: str | None, request: m.SendRequest, wait_ms: int) -> None:
        try:
            earlier = await self.store.find_message(session.user, request.client_id)
        except StoreError:
            earlier = None
        if earlier is not None:
            self._reply(
                session, "chat:ack", {"client_id": earlier.client_id, "message": m.message_object(earlier)}, ref
            )
            return
        self._error(
            session, "rate_limited", f"more than {self.config.send_rate_per_s:g} messages per second", ref, wait_ms
        )

    async def _write_loop(self, shard: int) -> None:
        """Commit this shard's queue in batches, up to `depth` transactions in flight.

        While one batch commits the next one gathers and starts; results are handled strictly in
        submission order, and a later transaction on the same conversation waits for the earlier
        one's row lock, so acks and fan-out stay in seq order.
        """
        queue, wake = self._queues[shard], self._wakes[shard]
        inflight: deque[tuple[list[tuple[Session, str | None, NewMessage]], asyncio.Future[list[StoredMessage | None]]]]
        inflight = deque()
        busy: dict[ConversationId, int] = {}  # conversations in flight: how many batches hold them
        while True:
            while queue and len(inflight) < self.depth:
                batch = self._take(queue, busy)
                if not batch:
                    break  # everything queued waits for a conversation already in flight
                for _, _, item in batch:
                    busy[item.conversation_id] = busy.get(item.conversation_id, 0) + 1
                appended = self.store.append([item for _, _, item in batch], int(time.time() * 1000))
                inflight.append((batch, asyncio.ensure_future(appended)))
            if not inflight:
                if self._stopping:
                    return
                await wake.wait()
                wake.clear()
                continue
            batch, oldest = inflight[0]
            if not oldest.done():
                waiter: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
                pending: set[asyncio.Future[Any]] = {oldest, waiter}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                wake.clear()
                if not oldest.done():
                    continue  # more sends arrived: start another batch while this one commits
            inflight.popleft()
            for _, _, item in batch:
                held = busy[item.conversation_id] - 1
                if held:
                    busy[item.conversation_id] = held
                else:
                    del busy[item.conversation_id]
            await self._committed(batch, oldest)

    def _take(
        self, queue: list[tuple[Session, str | None, NewMessage]], busy: dict[ConversationId, int]
    ) -> list[tuple[Session, str | None, NewMessage]]:
        """The next batch: queued sends whose conversation is not in a transaction in flight.

        Two transactions on one conversation could take its row lock in either order, so its
        seqs could come back out of submission order; keeping each conversation in at most one
        transaction makes acks and fan-out follow seq order while other conversations commit in
        parallel. The others keep their place in the queue.
        """
        if not busy:
            batch = queue[: self.max_batch]
            del queue[: self.max_batch]
        else:
            batch, rest = [], []
            for i, entry in enumerate(queue):
                if entry[2].conversation_id in busy:
                    rest.append(entry)
                    continue
                batch.append(entry)
                if len(batch) == self.max_batch:
                    rest += queue[i + 1 :]
                    break
            queue[:] = rest
        self._queued -= len(batch)
        return batch

    async def _committed(
        self, batch: list[tuple[Session, str | None, NewMessage]], result: asyncio.Future[list[StoredMessage | None]]
    ) -> None:
        try:
            stored = result.result()
        except StoreUnavailable as exc:
            log.warning("could not store %d messages: %s", len(batch), exc)
            self._unavailable(batch)
            return
        except Exception as exc:  # the writer must outlive any failure, or no send is ever stored
            log.error("storing %d messages failed", len(batch), exc_info=exc)
            if len(batch) == 1:
                self._unavailable(batch)
                return
            # Something in the batch itself failed: store each message alone, so one bad
            # message cannot fail the others.
            for entry in batch:
                try:
                    alone = await self.store.append([entry[2]], int(time.time() * 1000))
                except Exception as failure:
                    log.error("storing a message alone failed", exc_info=failure)
                    self._unavailable([entry])
                else:
                    self._answer([entry], alone)
            return
        self._answer(batch, stored)

    def _answer(self, batch: list[tuple[Session, str | None, NewMessage]], stored: list[StoredMessage | None]) -> None:
        """Ack what was stored; refuse what the store turned away (sender no longer a member)."""
        for (session, ref, item), message in zip(batch, stored, strict=True):
            if message is None:
                # The sender stopped being a member before the commit (a leave raced the send).
                self.hub.refund_send_token(session.user, self.config.send_burst)
                self._error(session, "forbidden", f"conversation {item.conversation_id} is not one of yours", ref)
            else:
                self._acked(session, ref, message)

    def _unavailable(self, batch: list[tuple[Session, str | None, NewMessage]]) -> None:
        for session, ref, _ in batch:
            self.hub.refund_send_token(session.user, self.config.send_burst)
            self._error(session, "unavailable", "storage is unavailable; retry with the same client_id", ref)

    def _acked(self, session: Session, ref: str | None, message: StoredMessage) -> None:
        obj = m.message_object(message)
        if message.is_new:
            members = self.hub.members(message.conversation_id) or ()
            self._to_members(members, m.encode("chat:message", {"message": obj}), skip=session.client)
        else:
            self.hub.refund_send_token(session.user, self.config.send_burst)  # replays are free
        self._reply(session, "chat:ack", {"client_id": message.client_id, "message": obj}, ref)

    # -- typing, reads, history ---------------------------------------------------------------

    def _typing(self, session: Session, envelope: m.Envelope) -> None:
        conversation = m.conversation_of(envelope.payload)
        members = self.hub.members(conversation)
        if members is None:
            self._spawn(self._typing_after_loading)(session, envelope)
            return
        self._forward_typing(session, conversation, members)

    async def _typing_after_loading(self, session: Session, envelope: m.Envelope) -> None:
        conversation = m.conversation_of(envelope.payload)
        self._forward_typing(session, conversation, await self._member_set(conversation))

    def _forward_typing(self, session: Session, conversation: ConversationId, members: set[UserId]) -> None:
        if session.user not in members:
            raise MessageRejected("forbidden", f"conversation {conversation} is not one of yours")
        now = asyncio.get_running_loop().time()
        if self.hub.allow_typing(session.user, conversation, now, self.config.typing_interval_s):
            notice = {
                "conversation_id": conversation,
                "user_id": session.user,
                "expires_in_ms": self.config.typing_expires_ms,
            }
            others = (u for u in members if u != session.user)  # not the typist's own devices
            self._to_members(others, m.encode("chat:typing", notice))

    async def _read(self, session: Session, envelope: m.Envelope) -> None:
        request = m.ReadRequest.parse(envelope.payload)
        members = await self._require_member(session, request.conversation_id)
        moved = await self.store.mark_read(request.conversation_id, session.user, request.seq)
        if moved is not None:
            receipt = {"conversation_id": request.conversation_id, "user_id": session.user, "seq": moved}
            self._to_members(members, m.encode("chat:read", receipt), skip=session.client)

    async def _history(self, session: Session, envelope: m.Envelope) -> None:
        request = m.HistoryRequest.parse(envelope.payload)
        await self._require_member(session, request.conversation_id)
        found, has_more = await self.store.history(request.conversation_id, request.before_seq, request.limit)
        payload = {
            "conversation_id": request.conversation_id,
            "messages": [m.message_object(x) for x in found],
            "has_more": has_more,
        }
        self._reply(session, "chat:history", payload, envelope.ref)

    async def _sync(self, session: Session, envelope: m.Envelope) -> None:
        request = m.SyncRequest.parse(envelope.payload)
        cfg = self.config
        mine = await self.store.conversation_ids(session.user)
        known = await self.store.last_seqs(mine)
        highest = dict(known)
        forbidden = [cid for cid in request.cursors if cid not in known]
        budget = cfg.sync_per_call
        complete = True
        for cid, after in request.cursors.items():
            if cid not in known:
                continue
            if known[cid] <= after:
                continue  # nothing after this cursor
            limit = min(cfg.sync_per_conversation, budget)
            found = await self.store.messages_after(cid, after, limit + 1) if limit > 0 else []
            if limit <= 0 or len(found) > limit:
                # Cut short: report what was delivered, so the next call's cursor resumes there.
                complete = False
                found = found[:limit]
                highest[cid] = found[-1].seq if found else after
            budget -= len(found)
            await self._replay(session, found)
        for cid in mine:
            if cid not in request.cursors:
                newest, _ = await self.store.history(cid, None, cfg.sync_unnamed)
                await self._replay(session, newest)
        payload = {
            "conversations": {str(cid): seq for cid, seq in highest.items()},
            "forbidden": forbidden,
            "complete": complete,
        }
        self._reply(session, "sync:done", payload, envelope.ref)

    async def _replay(self, session: Session, found: list[StoredMessage]) -> None:
        for message in found:
            if session.closed:
                return
            session.client.send_text(m.encode("chat:message", {"message": m.message_object(message)}))
            await session.client.drained()  # a long replay waits for the client to read

    # -- conversations ------------------------------------------------------------------------

    async def _create(self, session: Session, envelope: m.Envelope) -> None:
        request = m.CreateRequest.parse(envelope.payload, self.config.max_group_members)
        members = list(dict.fromkeys([session.user, *request.members]))  # the creator is always in
        if len(members) < 2:
            raise MessageRejected("bad_request", "a conversation needs at least one other member")
        if len(members) > self.config.max_group_members:
            raise MessageRejected("too_large", f"a group holds at most {self.config.max_group_members} members")
        kind = "direct" if len(members) == 2 else "group"
        conversation, created = await self.store.create_conversation(
            members, request.title, kind, int(time.time() * 1000)
        )
        if created or kind == "direct":  # a direct one asked for again may have had a member rejoin
            self.hub.set_members(conversation.id, members)
        obj = {"conversation": _conversation_object(conversation)}
        self._reply(session, "conversation:created", obj, envelope.ref)
        if created:
            self._to_members(members, m.encode("conversation:created", obj), skip=session.client)

    async def _list(self, session: Session, envelope: m.Envelope) -> None:
        request = m.ListRequest.parse(envelope.payload)
        page = await self.store.list_conversations(session.user, request.cursor, request.limit)
        payload = {
            "conversations": [_conversation_object(c, with_unread=True) for c in page.conversations],
            "next_cursor": page.next_cursor,
        }
        self._reply(session, "conversation:list", payload, envelope.ref)

    async def _members_page(self, session: Session, envelope: m.Envelope) -> None:
        request = m.MembersRequest.parse(envelope.payload)
        await self._require_member(session, request.conversation_id)
        found, next_cursor = await self.store.members_page(request.conversation_id, request.cursor, request.limit)
        payload = {"conversation_id": request.conversation_id, "members": found, "next_cursor": next_cursor}
        self._reply(session, "conversation:members", payload, envelope.ref)

    async def _leave(self, session: Session, envelope: m.Envelope) -> None:
        conversation = m.conversation_of(envelope.payload)
        members = set(await self._require_member(session, conversation))
        # The cache first: from here on, new sends from this user are refused (the store also
        # refuses, at commit, messages from anyone who is no longer a member).
        self.hub.remove_member(conversation, session.user)
        try:
            await self.store.remove_member(conversation, session.user)
        except StoreError:
            self.hub.add_member(conversation, session.user)
            raise
        # The remaining members and the user's other connections learn of it.
        notice = m.encode("conversation:member_removed", {"conversation_id": conversation, "user_id": session.user})
        self._to_members(members, notice, skip=session.client)
        self._reply(session, "conversation:left", {"conversation_id": conversation}, envelope.ref)

    # -- presence and tokens ------------------------------------------------------------------

    async def _came_online(self, user: UserId, *, announce: bool) -> None:
        conversations = await self.store.conversation_ids(user)
        missing = [cid for cid in conversations if self.hub.members(cid) is None]
        if missing:
            for cid, members in (await self.store.members_of(missing)).items():
                if self.hub.members(cid) is None:  # a send may have loaded it meanwhile
                    self.hub.set_members(cid, members)
        if not self.hub.is_online(user):
            return  # gone (and past the grace period) while loading: announce nothing, keep nothing
        self.hub.set_conversations(user, conversations)
        if announce:
            self._to_members(self.hub.contacts(user), m.encode("user:online", {"user_id": user}))

    async def _presence(self, session: Session, envelope: m.Envelope) -> None:
        query = m.PresenceQuery.parse(envelope.payload, self.config.max_presence_query)
        if session.user in self._loading or self.hub.conversations(session.user) is None:
            await asyncio.shield(self._load_contacts(session.user, announce=False))
        visible = self.hub.contacts(session.user)
        online = [u for u in dict.fromkeys(query.user_ids) if u in visible and self.hub.is_online(u)]
        self._reply(session, "presence:state", {"online": online}, envelope.ref)

    def _refresh(self, session: Session, envelope: m.Envelope) -> None:
        token = m.token_of(envelope.payload)
        try:
            identity = self.verifier.verify(token)
        except AuthError as exc:
            raise MessageRejected("unauthorized", str(exc)) from None
        if identity.user_id != session.user:
            raise MessageRejected("unauthorized", "the new token is for another user")
        session.exp = identity.exp
        self._reply(session, "auth:refreshed", {"exp": int(identity.exp)}, envelope.ref)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_TICK_S)
            try:
                self.tick(time.time(), loop.time())
            except Exception:
                log.exception("chat tick failed")

    def tick(self, wall: float, now: float) -> None:
        """Expire tokens (close 4001), end grace periods (`user:offline`), forget stale state."""
        # A scan, not a heap: nothing to forget when a session closes or refreshes, and 10,000
        # sessions take about a millisecond every half second.
        deadline = wall - self.leeway_s
        for session in [s for s in self._sessions.values() if s.exp <= deadline]:
            session.client.close(4001, "token expired")
        for user in self.hub.expired_graces(now):
            self._to_members(self.hub.contacts(user), m.encode("user:offline", {"user_id": user}))
            self.hub.forget(user)
        cfg = self.config
        self.hub.forget_typing(now - cfg.typing_interval_s)
        self.hub.forget_buckets(now, cfg.send_rate_per_s, cfg.send_burst)

    def verify(self, token: str) -> Identity:
        """Verify a token for a new connection (the gateway calls this before the upgrade).

        Raises:
            AuthError: the token is refused.
        """
        return self.verifier.verify(token)

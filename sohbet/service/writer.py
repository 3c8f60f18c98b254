"""The group-commit writer: accepted `chat:send`s are stored in batches, then acked and fanned out.

Layer: service. Imports asyncio, the chat domain and the store interface.

One writer task per shard of conversations takes what is queued, writes it in one transaction
(`MessageStore.append`), and once the batch has committed acks each sender and delivers each new
message to the conversation's members, in seq order. Up to `depth` transactions are in flight
at once: while one commits, the next one gathers and starts. With `gather_s`, a batch also waits
that long after its oldest send (of a conversation not in flight) for more to join it: a
transaction costs the server and the database about the same whatever it carries, and a process
that sees each send on its own would otherwise pay that cost per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final, TypeAlias

from sohbet.chat import wire
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage, StoredMessage
from sohbet.chat.wire import EventType, RequestType
from sohbet.errors import ErrorCode, StoreUnavailable
from sohbet.service.context import Context, not_a_member
from sohbet.service.session import Session

__all__ = ["PendingSend", "Writer"]

log = logging.getLogger("sohbet.chat")


#: A `chat:send` waiting for its batch: who asked, the ref its ack carries, what to store, and
#: when it was accepted (`perf_counter`, for the ack latency: uvloop's loop clock moves in whole
#: milliseconds, too coarse to time a commit). A plain tuple, not a NamedTuple: building one of
#: those costs ~0.35 µs, per send.
PendingSend: TypeAlias = tuple[Session, str | None, NewMessage, float]
Batch: TypeAlias = list[PendingSend]
#: Transactions started and not yet answered, oldest first: the batch, its append, when it began.
InFlight: TypeAlias = deque[tuple[Batch, asyncio.Future[list[StoredMessage | None]], float]]

# Looked up once: an enum member's attribute lookup costs ~0.1 µs, per message.
_MESSAGE: Final = EventType.MESSAGE
_SEND: Final = RequestType.SEND.value
#: Sends remembered as maybe stored but never delivered (see `Writer._uncertain`).
_MAX_UNCERTAIN: Final = 100_000


class Writer:
    """The queues of accepted sends and the tasks that commit them."""

    def __init__(
        self, ctx: Context, *, max_batch: int, max_queue: int, writers: int, depth: int, gather_s: float = 0.0
    ) -> None:
        self.ctx = ctx
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.depth = depth
        self.gather_s = gather_s
        # One queue and one writer task per shard; a conversation always maps to the same shard,
        # so its messages commit and fan out in seq order, while other conversations commit in
        # parallel (a database like Postgres then flushes their commits together).
        self._queues: list[Batch] = [[] for _ in range(writers)]
        self._wakes = [asyncio.Event() for _ in range(writers)]
        # Per shard: its writer waits on a gathering timer, so a send need not wake it.
        self._gathering = [False] * writers
        self._queued = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Sends whose transaction failed without saying whether it committed (the connection
        # died during COMMIT): a retry that finds one stored delivers it, since nobody has.
        self._uncertain: OrderedDict[tuple[UserId, str], None] = OrderedDict()

    @property
    def queued(self) -> int:
        """Sends waiting for a batch."""
        return self._queued

    @property
    def uncertain_count(self) -> int:
        """Sends remembered as maybe stored (capped at `_MAX_UNCERTAIN`): for the metrics."""
        return len(self._uncertain)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The writer tasks (one per shard)."""
        return self._tasks

    def start(self) -> None:
        """Start one writer task per shard."""
        self._tasks = [asyncio.ensure_future(self._write_loop(shard)) for shard in range(len(self._queues))]

    async def stop(self) -> None:
        """Commit what is queued, then stop; from now on `submit` refuses."""
        self._stopping = True
        for wake in self._wakes:
            wake.set()
        await asyncio.gather(*self._tasks)

    def submit(self, send: PendingSend) -> bool:
        """Queue a send for the next batch of its shard; False when full or stopping."""
        if self._queued >= self.max_queue or self._stopping:
            return False
        shard = send[2].conversation_id % len(self._queues)
        queue = self._queues[shard]
        queue.append(send)
        self._queued += 1
        # While a batch gathers, its writer waits on a timer: a send wakes it only when it fills
        # the batch, not for every send in between.
        if not self._gathering[shard] or len(queue) >= self.max_batch:
            self._wakes[shard].set()
        return True

    async def _write_loop(self, shard: int) -> None:
        """Commit this shard's queue in batches, up to `depth` transactions in flight.

        While one batch commits the next one gathers and starts; results are handled strictly in
        submission order, and a later transaction on the same conversation waits for the earlier
        one's row lock, so acks and fan-out stay in seq order.
        """
        inflight: InFlight = deque()
        try:
            await self._write_batches(shard, inflight)
        finally:
            # Cancelled with transactions in flight (a shutdown out of time, storage hanging):
            # nobody will ever be told of them, and their failures must not end up unretrieved.
            for _, appended, _ in inflight:
                appended.cancel()
                appended.add_done_callback(_consume)

    async def _write_batches(self, shard: int, inflight: InFlight) -> None:
        queue, wake = self._queues[shard], self._wakes[shard]
        gather, loop = self.gather_s, asyncio.get_running_loop()
        busy: dict[ConversationId, int] = {}  # conversations in flight: how many batches hold them
        due = False  # the gathering timer fired: the batch goes, whatever `perf_counter` says

        def ended(_: object) -> None:
            wake.set()

        def gathered() -> None:
            # uvloop's timers count whole milliseconds and may fire a little before `ready`:
            # rechecking the time then would arm a zero-delay timer again and again.
            nonlocal due
            due = True
            wake.set()

        while True:
            ready = 0.0  # while a batch gathers: the `perf_counter` time it is due
            while queue and len(inflight) < self.depth:
                if gather and not due and not self._stopping:
                    first, free = _first_free(queue, busy)
                    if first is None:
                        break  # everything queued waits for a conversation already in flight
                    if free < self.max_batch:  # not yet a full batch of what can go now
                        ready = first + gather
                        if perf_counter() < ready:
                            break
                        ready = 0.0
                due = False
                if not self._start(queue, busy, inflight, ended):
                    break  # everything queued waits for a conversation already in flight
            if not inflight and self._stopping:
                return
            if not inflight or not inflight[0][1].done():
                # Until a send arrives, a batch has gathered, or a transaction ends: each sets
                # the one event (no task and `asyncio.wait` per wait).
                await self._wait(shard, loop, ready, gathered)
                if not inflight or not inflight[0][1].done():
                    continue  # more sends arrived, or a batch has gathered: start it while this one commits
                # The oldest has ended: answer it first, which frees its conversations for the next batch.
            await self._finish(inflight, busy)

    # A batch is started and answered in frames of their own: a local of the loop above would
    # hold the last batch's sessions, and with them their closed sockets, until the next send.

    def _start(
        self,
        queue: Batch,
        busy: dict[ConversationId, int],
        inflight: InFlight,
        ended: Callable[[object], None],
    ) -> bool:
        """Take the next batch and start its transaction; False when nothing queued can go."""
        batch = self._take(queue, busy)
        if not batch:
            return False
        for send in batch:
            cid = send[2].conversation_id
            busy[cid] = busy.get(cid, 0) + 1
        appended = asyncio.ensure_future(self.ctx.store.append([send[2] for send in batch], self.ctx.wall_ms()))
        appended.add_done_callback(ended)
        inflight.append((batch, appended, perf_counter()))
        return True

    async def _finish(
        self,
        inflight: InFlight,
        busy: dict[ConversationId, int],
    ) -> None:
        """Answer the oldest transaction in flight, which has ended."""
        batch, oldest, began = inflight.popleft()
        stats = self.ctx.stats
        stats.commit_seconds.observe(perf_counter() - began)
        stats.batch_size.observe(len(batch))
        for send in batch:
            cid = send[2].conversation_id
            held = busy[cid] - 1
            if held:
                busy[cid] = held
            else:
                del busy[cid]
        await self._committed(batch, oldest)

    async def _wait(
        self, shard: int, loop: asyncio.AbstractEventLoop, ready: float, gathered: Callable[[], None]
    ) -> None:
        """Until a send wakes the writer, or with *ready* (a batch gathering) until it is due."""
        wake = self._wakes[shard]
        timer = loop.call_later(ready - perf_counter(), gathered) if ready else None
        self._gathering[shard] = timer is not None
        try:
            await wake.wait()
            wake.clear()
        finally:
            self._gathering[shard] = False
            if timer is not None:
                timer.cancel()

    def _take(self, queue: Batch, busy: dict[ConversationId, int]) -> Batch:
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
            for i, send in enumerate(queue):
                if send[2].conversation_id in busy:
                    rest.append(send)
                    continue
                batch.append(send)
                if len(batch) == self.max_batch:
                    rest += queue[i + 1 :]
                    break
            queue[:] = rest
        self._queued -= len(batch)
        return batch

    async def _committed(self, batch: Batch, result: asyncio.Future[list[StoredMessage | None]]) -> None:
        # The error is read, not raised: raised here, its traceback would take in this frame,
        # which holds the future that holds the error, and the batch's sessions with them
        # would wait in that cycle for a full garbage collection.
        error = result.exception()
        if error is None:
            self.ctx.storage_answered()
            await self._answer(batch, result.result())
            return
        if isinstance(error, StoreUnavailable):
            self.ctx.storage_failed(error)  # said once when storage goes down, not per batch
            log.debug("could not store %d messages: %s", len(batch), error)
            self._unavailable(batch, uncertain=True)
            return
        # Anything else: the writer must outlive any failure, or no send is ever stored.
        log.error("storing %d messages failed", len(batch), exc_info=error)
        if len(batch) == 1:
            self._unavailable(batch)
            return
        # Something in the batch itself failed: store each message alone, so one bad message
        # cannot fail the others.
        for send in batch:
            try:
                alone = await self.ctx.store.append([send[2]], self.ctx.wall_ms())
            except Exception as failure:
                log.error("storing a message alone failed", exc_info=failure)
                self._unavailable([send], uncertain=True)
            else:
                await self._answer([send], alone)

    async def _answer(self, batch: Batch, stored: list[StoredMessage | None]) -> None:
        """Ack what was stored; refuse what the store turned away (sender no longer a member)."""
        ctx = self.ctx
        hub = ctx.hub
        latency = ctx.stats.ack_latency
        now = perf_counter()
        for (session, ref, item, accepted), message in zip(batch, stored, strict=True):
            if message is None:
                # The sender stopped being a member before the commit (a leave raced the send).
                ctx.refund(session, _SEND)
                exc = not_a_member(item.conversation_id)
                ctx.error(session, exc.code, str(exc), ref)
                continue
            fans_out = message.is_new or (message.sender_id, message.client_id) in self._uncertain
            loaded = None
            if fans_out and hub.members(message.conversation_id) is None:
                # Dropped from the cache while it committed: load it again before fanning out.
                # Later batches wait for this one, so seq order holds. The set loaded is kept:
                # other loads landing before this resumes may drop it from the cache again.
                try:
                    loaded = await ctx.member_set(message.conversation_id)
                except StoreUnavailable as exc:
                    log.warning("could not load members to deliver seq %d: %s", message.seq, exc)
            latency.observe(now - accepted)
            self._acked(session, ref, message, loaded=loaded)

    def _unavailable(self, batch: Batch, *, uncertain: bool = False) -> None:
        ctx = self.ctx
        for session, ref, item, _ in batch:
            if uncertain:
                self._remember_uncertain(item.sender_id, item.client_id)
            ctx.refund(session, _SEND)
            ctx.error(session, ErrorCode.UNAVAILABLE, "storage is unavailable; retry with the same client_id", ref)

    def _remember_uncertain(self, sender: UserId, client_id: str) -> None:
        self._uncertain[(sender, client_id)] = None
        if len(self._uncertain) > _MAX_UNCERTAIN:
            self._uncertain.popitem(last=False)

    def replayed(
        self, session: Session, ref: str | None, message: StoredMessage, *, loaded: set[UserId] | None = None
    ) -> None:
        """Answer a retry of a message found stored (outside a batch: it spent no token);
        *loaded*: its members as just loaded (see `_acked`)."""
        self._acked(session, ref, message, spent=False, loaded=loaded)

    def _acked(
        self,
        session: Session,
        ref: str | None,
        message: StoredMessage,
        *,
        spent: bool = True,
        loaded: set[UserId] | None = None,
    ) -> None:
        """*loaded*: the members as `_answer` just loaded them, for when the cache dropped them."""
        ctx = self.ctx
        obj = wire.message_object(message)
        # Stored by a transaction whose answer was lost (see `_uncertain`): nobody delivered it.
        lost = bool(self._uncertain) and self._uncertain.pop((message.sender_id, message.client_id), 0) is None
        if message.is_new or lost:
            # Also marks the member set recently used (the cache's order); the notifier needs it.
            cached = ctx.hub.members(message.conversation_id)
            members = cached if cached is not None else loaded or ()
            if ctx.cluster.active:
                # Each instance delivers to its own connections, in seq order (`Cluster`).
                data = wire.encode(_MESSAGE, {"message": obj})
                ctx.cluster.message(message.conversation_id, message.seq, data, session.socket)
            else:
                sockets = (
                    ctx.hub.member_connections(message.conversation_id)
                    if cached is not None
                    else ctx.hub.connections_of(members)
                )
                # Encoded only for someone besides the sender's own connection: in a direct
                # conversation whose other member is offline, nobody.
                if len(sockets) > 1 or (sockets and sockets[0] is not session.socket):
                    ctx.to_sockets(sockets, wire.encode(_MESSAGE, {"message": obj}), skip=session.socket)
            notifier = ctx.notifier
            if notifier is not None:
                offline = ctx.hub.unconnected(u for u in members if u != message.sender_id)
                if offline:
                    notifier.notify(offline, obj)
        if spent and not message.is_new:
            ctx.refund(session, _SEND)  # replays are free
        ctx.stats.acked += 1
        session.acked(message, obj, ref)


def _first_free(queue: Batch, busy: dict[ConversationId, int]) -> tuple[float | None, int]:
    """When the oldest queued send of a conversation not in flight was accepted (None: none is),
    and how many such sends are queued (those waiting behind a transaction cannot fill a batch)."""
    if not busy:
        return queue[0][3], len(queue)
    free = [send[3] for send in queue if send[2].conversation_id not in busy]
    return (free[0] if free else None), len(free)


def _consume(appended: asyncio.Future[Any]) -> None:
    """Retrieve a cancelled transaction's outcome, so asyncio does not log it as never retrieved."""
    if not appended.cancelled():
        appended.exception()

"""One instance among several: what it tells the others, what it does with what they tell it.

Layer: service. Imports asyncio, the chat domain, the store and broker interfaces.

Each instance delivers to its own connections only. What happens here is delivered here and
sent through the broker (`send`, `message`); what the broker brings from the others is
delivered here (`event`). An instance follows the conversations of its connected users (the
hub's `here` index): the broker brings it their messages, typing and reads, and everything
that is not about one conversation.

Messages are delivered in seq order per conversation, each once, with no gap: the broker is
at-most-once and two instances may store consecutive messages of one conversation, so each
followed conversation has a `_Line` that remembers the last seq delivered here. A message
past a gap waits (`GAP_WAIT_S`) for the missing ones to arrive, then reads what is still
missing from storage, where it is already committed (seqs are given out in commit order). When
the broker's link comes back, every line reads what it missed while it was down.

A connection is admitted only after the broker has counted it against the user's limit over
the cluster and this instance follows all of the user's conversations, and `hello` comes after
that: whatever is stored after `hello` reaches the connection live, and whatever was stored
before it, the client's `sync` finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

from sohbet.broker import REFUSED, Broker, Header, Kind, Presence
from sohbet.chat import wire
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.wire import EventType
from sohbet.errors import StoreError
from sohbet.service.context import Context
from sohbet.service.session import Session, Socket
from sohbet.store import Span

__all__ = ["GAP_WAIT_S", "MAX_FILL", "Cluster"]

log = logging.getLogger("sohbet.cluster")

#: How long a message past a gap waits for the missing ones to come through the broker before
#: they are read from storage (another instance stored them a moment earlier).
GAP_WAIT_S: Final = 0.05
#: The most messages of one conversation read from storage to fill one gap; an older part of a
#: longer gap is left to the clients' `sync` (they see the gap in seqs).
MAX_FILL: Final = 1000
_MESSAGE: Final = EventType.MESSAGE
_MAX_JOINED_AT: Final = 100_000  # joins waiting to be followed (consumed within a reconcile)
_RECHECK_CHUNK: Final = 1000  # conversations whose members one query reads
_RECHECK_USERS: Final = 32  # users whose conversations are read at once after a relink
#: How often the followed conversations are compared with storage (`Cluster.sweep_soon`).
SWEEP_S: Final = 5.0
_SWEEP_BATCH: Final = 5000  # conversations compared per sweep
#: How often the membership log is read: the longest a change nobody heard of goes unseen.
MEMBERSHIP_POLL_S: Final = 1.0
_LOG_BATCH: Final = 1000
#: A missing id in the membership log is a transaction still committing, or one rolled back:
#: after this long it is taken for the second.
_LOG_HOLE_S: Final = 5.0
_LOG_KEPT_S: Final = 3600.0  # logged changes older than this are pruned
_PRUNE_EVERY: Final = 600  # polls
_KIND_MESSAGE: Final = Kind.MESSAGE.value

#: One waiting message: seq, the encoded event, the connection not to send it to.
_Waiting = tuple[int, bytes, Socket | None]


class _Line:
    """One followed conversation's delivery here (see the module docstring)."""

    __slots__ = ("busy", "closed", "followed", "last", "waiting")

    def __init__(self) -> None:
        self.last: int | None = None  # None: not known yet; the next message sets it
        self.busy = True  # reading storage: messages wait
        self.waiting: list[_Waiting] = []
        #: Set while a gap is waited for, when the missing messages have all come.
        self.closed: asyncio.Event | None = None
        #: Done once the broker confirmed the subscription.
        self.followed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Cluster:
    """The service's side of the broker (it is the broker's `Listener`)."""

    def __init__(
        self,
        ctx: Context,
        broker: Broker,
        came_online: Callable[[UserId], None],
        close_user: Callable[[UserId, int, str], int],
    ) -> None:
        """Args:
        came_online: told when a user comes online on another instance (and nowhere else).
        close_user: closes every connection of a user here, those being admitted too.
        """
        self.ctx = ctx
        self._came_online = came_online
        self._close_user = close_user
        self.broker = broker
        #: Whether other instances may exist; nothing below runs for a single process.
        self.active = broker.clustered
        self._lines: dict[ConversationId, _Line] = {}
        self._remote: dict[str, dict[UserId, int]] = {}  # other instances' connections by user
        self._totals: dict[UserId, int] = {}  # ... summed over them
        self._reconciling: asyncio.Future[None] | None = None
        # Where conversations a user here just joined stood when they joined (from the event
        # that said so): what is stored after that is delivered once they are followed.
        self._joined_at: dict[ConversationId, int] = {}
        # Conversations of connections being admitted (followed before their user is `here`).
        self._pending: dict[ConversationId, int] = {}
        self._was_down = False  # the link has been lost at least once
        self._sweeping: asyncio.Future[None] | None = None
        self._next_sweep = 0.0
        self._relinking: asyncio.Future[None] | None = None
        self._relink_again: str | None = None  # asked again meanwhile: "own" or "other"
        #: Counted for the metrics endpoint.
        self.counters = dict.fromkeys(("gaps", "filled", "duplicates", "link_losses", "swept"), 0)

    # -- what happens here --------------------------------------------------------------------

    def message(self, conversation: ConversationId, seq: int, data: bytes, skip: Socket | None) -> None:
        """A message stored here: to the other instances, and to the connections here in order."""
        self.broker.send({"k": _KIND_MESSAGE, "c": conversation, "s": seq}, data)
        self._deliver(conversation, seq, data, skip)

    def send(self, header: Header, data: bytes = b"") -> None:
        """Tell the other instances (a no-op for a single process)."""
        if self.active:
            self.broker.send(header, data)

    async def follow_membership_log(self) -> None:
        """Read the membership log every `MEMBERSHIP_POLL_S` and apply what it says: a change
        Redis did not bring (it was down, or its instance died before publishing) still reaches
        this instance's caches within a second or so. Runs until cancelled."""
        ctx = self.ctx
        last = None
        hole_since: float | None = None
        polls = 0
        while True:
            if last is not None:
                await asyncio.sleep(MEMBERSHIP_POLL_S)
            try:
                if last is None:
                    last = await ctx.store.membership_log_end()  # what came before, storage has
                    continue
                changes = await ctx.store.membership_changes(last, _LOG_BATCH)
                polls += 1
                if polls % _PRUNE_EVERY == 1:  # at the first poll, then every so often
                    await ctx.store.prune_membership_log(_LOG_KEPT_S)
            except StoreError:
                continue  # storage down: said elsewhere; the next poll tries again
            # The last change of each membership is its state (a leave then a rejoin is a member).
            latest = {(c.conversation, c.user): c.joined for c in changes}
            for (conversation, user), joined in latest.items():
                self._apply_membership(conversation, user, joined=joined)
            # Advance over consecutive ids only: a hole may be a transaction still committing.
            now = ctx.clock.now()
            for change in changes:
                if change.id == last + 1:
                    last = change.id
                    hole_since = None
                elif hole_since is None:
                    hole_since = now
                    break
                elif now - hole_since >= _LOG_HOLE_S:
                    last = change.id  # rolled back, long ago: skip it
                    hole_since = None
                else:
                    break
            if changes:
                self.reconcile_soon()

    def _apply_membership(self, conversation: ConversationId, user: UserId, *, joined: bool) -> None:
        """Make this instance's caches say what storage says of one membership; a user here who
        still thought themself a member is told they were removed."""
        hub = self.ctx.hub
        if joined:
            hub.add_member(conversation, user)
            return
        mine = hub.conversations(user)
        told = bool(hub.connections(user)) and mine is not None and conversation in mine
        hub.remove_member(conversation, user)
        if told:
            notice = {"conversation_id": conversation, "user_id": user}
            self.ctx.to_members([user], wire.encode(EventType.MEMBER_REMOVED, notice))

    @contextlib.asynccontextmanager
    async def admitting(self, session: Session) -> AsyncIterator[bool]:
        """Admit a connection (`admit`) and keep its conversations followed until the body,
        which welcomes it, is done: until then its user is not in the hub's `here` index, and
        nothing else keeps them followed. Yields False when the limit refused it.

        Raises:
            StoreError: the user's conversations could not be loaded.
        """
        pending = self._pending
        held: list[ConversationId] = []
        try:
            yield await self.admit(session, held)
        finally:
            for conversation in held:
                left = pending[conversation] - 1
                if left:
                    pending[conversation] = left
                else:
                    del pending[conversation]
                    if not self.ctx.hub.here(conversation):  # it was closed meanwhile
                        self._unfollow(conversation)
            if session.closed and not session.admitted:
                self.ctx.hub.forget(session.user)

    async def admit(self, session: Session, held: list[ConversationId]) -> bool:
        """Count a new connection against its user's limit over the cluster and follow all of
        the user's conversations (held in *held* meanwhile); False when the limit refuses it.

        Raises:
            StoreError: the user's conversations could not be loaded.
        """
        ctx = self.ctx
        user = session.user
        # Read from storage, whatever is cached: a set another instance sent with its presence
        # may be stale, and it must never grant access.
        conversations = ctx.hub.reload_conversations(user, await ctx.store.conversation_ids(user))
        total = await self.broker.admit(user, ctx.config.max_connections_per_user, conversations)
        if total == REFUSED:
            ctx.hub.forget(user)
            return False
        if session.closed:  # gone while it was counted
            self.broker.release(user, conversations)
            ctx.hub.forget(user)
            return False
        session.admitted = True
        held.extend(conversations)
        for conversation in held:
            self._pending[conversation] = self._pending.get(conversation, 0) + 1
        await self._follow(held)
        return True

    def release(self, session: Session) -> None:
        """An admitted connection closed."""
        self.broker.release(session.user, self.ctx.hub.conversations(session.user) or ())

    # -- following conversations --------------------------------------------------------------

    async def _reconcile_now(self) -> None:
        """Reconcile, and wait for it (the lines of conversations left here are dropped)."""
        while self._reconciling is not None:
            await asyncio.shield(self._reconciling)
        self.reconcile_soon()
        if self._reconciling is not None:
            await asyncio.shield(self._reconciling)

    def reconcile_soon(self) -> None:
        """Follow the conversations that gained a member here, stop following those that lost
        their last one (after a membership change, or from the tick)."""
        if self.active and self._reconciling is None and self.ctx.hub.here_changed:
            self._reconciling = self.ctx.start(self._reconcile())

    async def _reconcile(self) -> None:
        try:
            hub = self.ctx.hub
            while changes := hub.take_here_changes():
                for conversation in changes:
                    if not hub.here(conversation) and conversation not in self._pending:
                        self._unfollow(conversation)
                await self._follow(c for c in changes if hub.here(c))
        finally:
            self._reconciling = None
            self._joined_at.clear()  # joins of users whose conversations are not loaded here

    def sweep_soon(self) -> None:
        """Every so often (the service's tick): compare what the followed conversations hold in
        storage with what was delivered here, deliver what is missing, and subscribe again
        where events went missing. A safety net under pub/sub: whatever lost a message (a
        subscription that silently went, an event dropped by Redis), it reaches the
        connections here within `SWEEP_S`, not only at their next `sync`."""
        if not self.active or self._sweeping is not None or not self.broker.up:
            return
        now = self.ctx.clock.now()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_S
        self._sweeping = self.ctx.start(self._sweep())

    async def _sweep(self) -> None:
        try:
            lines = {c: line for c, line in self._lines.items() if not line.busy and line.last is not None}
            if not lines:
                return
            chosen = dict(list(lines.items())[:_SWEEP_BATCH])
            if len(lines) > _SWEEP_BATCH:  # the rest next time: the first are put last
                for conversation in chosen:
                    self._lines[conversation] = self._lines.pop(conversation)
            try:
                stored = await self.ctx.store.last_seqs(list(chosen))
            except StoreError:
                return
            behind = {c: line for c, line in chosen.items() if line.last is not None and stored.get(c, 0) > line.last}
            if behind:
                self.counters["swept"] += len(behind)
                await self.broker.refollow(behind)
                await self._catch_up({c: line for c, line in behind.items() if not line.busy}, up_to=stored)
        finally:
            self._sweeping = None

    def _unfollow(self, conversation: ConversationId) -> None:
        line = self._lines.pop(conversation, None)
        if line is not None:
            if not line.followed.done():
                line.followed.cancel()
            self.broker.unfollow([conversation])

    async def _follow(self, conversations: Iterable[ConversationId]) -> None:
        """Follow these conversations, if not yet, and wait until each one is followed."""
        wanted = list(conversations)
        lines = {c: _Line() for c in wanted if c not in self._lines}
        waits = [(c, self._lines[c].followed) for c in wanted if c in self._lines]
        self._lines.update(lines)
        if lines:
            new = list(lines)
            try:
                base = await self.ctx.store.last_seqs(new)
            except StoreError as exc:
                log.warning("could not read where %d conversations stand: %s", len(new), exc)
            else:
                for conversation, line in lines.items():
                    line.last = base.get(conversation, 0)
            for conversation, line in lines.items():
                joined_at = self._joined_at.pop(conversation, None)
                if joined_at is not None and (line.last is None or joined_at < line.last):
                    line.last = joined_at
            await self.broker.follow(new)
            for line in lines.values():
                if not line.followed.done():
                    line.followed.set_result(None)
            # What was stored between reading where they stood and the subscription.
            await self._catch_up(lines)
        for conversation, waiting in waits:
            if not waiting.done():
                try:
                    await asyncio.shield(waiting)
                except asyncio.CancelledError:
                    if not waiting.cancelled():
                        raise  # this task is cancelled
                    await self._follow([conversation])  # it was dropped meanwhile: again

    # -- delivering in order ------------------------------------------------------------------

    def _deliver(self, conversation: ConversationId, seq: int, data: bytes, skip: Socket | None) -> None:
        line = self._lines.get(conversation)
        if line is None:
            self._out(conversation, data, skip)
            return
        if line.busy:
            line.waiting.append((seq, data, skip))
            if line.closed is not None and _contiguous(line):
                line.closed.set()  # the wait for the gap ends now, not after GAP_WAIT_S
            return
        last = line.last
        if last is None or seq == last + 1:
            line.last = seq
            self._out(conversation, data, skip)
        elif seq <= last:
            self.counters["duplicates"] += 1
        else:
            self.counters["gaps"] += 1
            line.busy = True
            line.waiting.append((seq, data, skip))
            line.closed = asyncio.Event()
            self.ctx.start(self._fill_gap(conversation, line, line.closed))

    def _out(self, conversation: ConversationId, data: bytes, skip: Socket | None) -> None:
        ctx = self.ctx
        sent = ctx.outbox.deliver(ctx.hub.here_connections(conversation), data, skip=skip)
        ctx.stats.deliveries += sent

    async def _fill_gap(self, conversation: ConversationId, line: _Line, closed: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(GAP_WAIT_S):
                await closed.wait()
        except TimeoutError:
            pass  # still missing: storage has them
        line.closed = None
        self._advance(line, conversation)
        if line.waiting and self._lines.get(conversation) is line:
            await self._catch_up({conversation: line}, up_to={conversation: min(w[0] for w in line.waiting) - 1})
        else:
            line.busy = False

    def _advance(self, line: _Line, conversation: ConversationId) -> None:
        """Deliver the waiting messages that continue the line without a gap."""
        line.waiting.sort(key=_seq)
        while line.waiting:
            seq, data, skip = line.waiting[0]
            if line.last is not None and seq > line.last + 1:
                break
            del line.waiting[0]
            if line.last is None or seq > line.last:
                line.last = seq
                self._out(conversation, data, skip)
            else:
                self.counters["duplicates"] += 1

    async def _catch_up(
        self, lines: dict[ConversationId, _Line], up_to: dict[ConversationId, int] | None = None
    ) -> None:
        """Deliver, from storage, what each line misses up to *up_to* (default: the newest),
        then what waited; the lines are busy meanwhile."""
        for line in lines.values():
            line.busy = True
        try:
            if up_to is None:
                up_to = await self.ctx.store.last_seqs(list(lines))
            spans: list[Span] = []
            for conversation, line in lines.items():
                end = up_to.get(conversation, 0)
                if line.last is not None and end > line.last:
                    spans.append((conversation, max(line.last, end - MAX_FILL), end))
            if spans:
                for message in await self.ctx.store.messages_between(spans):
                    conversation = message.conversation_id
                    line = lines[conversation]
                    if self._lines.get(conversation) is not line:
                        continue  # no longer followed
                    if line.last is not None and message.seq <= line.last:
                        continue
                    line.last = message.seq
                    held = next((w for w in line.waiting if w[0] == message.seq), None)
                    if held is not None:  # it came meanwhile: as it came (its sender is skipped)
                        self._out(conversation, held[1], held[2])
                        continue
                    self.counters["filled"] += 1
                    obj = {"message": wire.message_object(message)}
                    self._out(conversation, wire.encode(_MESSAGE, obj), None)
        except StoreError as exc:
            log.warning("could not read missed messages of %d conversations: %s", len(lines), exc)
        finally:
            for conversation, line in lines.items():
                line.busy = False
                if line.waiting:
                    # Past a gap storage could not fill: deliver on, the clients' sync fills it.
                    line.waiting.sort(key=_seq)
                    if line.last is not None and line.waiting[0][0] > line.last + 1:
                        line.last = line.waiting[0][0] - 1
                    self._advance(line, conversation)

    # -- what the other instances tell ---------------------------------------------------------

    def event(self, header: Header, data: bytes) -> None:  # see Listener
        ctx = self.ctx
        hub = ctx.hub
        kind = header["k"]
        if kind == _KIND_MESSAGE:
            self._deliver(header["c"], header["s"], data, None)
        elif kind == Kind.TYPING:
            typist = header["u"]
            ctx.to_members([u for u in hub.here(header["c"]) if u != typist], data)
        elif kind == Kind.READ:
            self._out(header["c"], data, None)
        elif kind == Kind.CREATED:
            conversation, joined = header["c"], header["m"]
            self._joined(conversation, joined, header["s"])
            if header.get("new") and any(hub.connections(u) for u in joined):
                hub.set_members(conversation, joined)  # its members send at once: no load
            else:
                for user in joined:
                    hub.add_member(conversation, user)
            ctx.to_members(header["m"], data)
            self.reconcile_soon()
        elif kind == Kind.MEMBER_ADDED:
            conversation, user = header["c"], header["u"]
            self._joined(conversation, [user], header["s"])
            hub.add_member(conversation, user)
            ctx.to_members(hub.here(conversation) | {user}, data)
            self.reconcile_soon()
        elif kind == Kind.MEMBER_REMOVED:
            conversation, user = header["c"], header["u"]
            told = hub.here(conversation) | {user}
            hub.remove_member(conversation, user)
            ctx.to_members(told, data)
            self.reconcile_soon()
        elif kind == Kind.PUBLISH:
            ctx.to_members(header["us"], data)
        elif kind == Kind.BROADCAST:
            ctx.stats.deliveries += ctx.outbox.deliver(hub.all_connections(), data)
        elif kind == Kind.RELINKED:
            self._relink(own=False)
        elif kind == Kind.DISCONNECT:
            self._close_user(header["u"], header["code"], header["reason"])
        else:
            log.warning("unknown event kind %r from instance %s", str(kind)[:16], str(header.get("i"))[:64])

    def _joined(self, conversation: ConversationId, users: list[UserId], since: int) -> None:
        if conversation in self._lines or not any(self.ctx.hub.connections(u) for u in users):
            return  # followed already, or nobody here to follow it for
        if len(self._joined_at) < _MAX_JOINED_AT:
            self._joined_at[conversation] = min(since, self._joined_at.get(conversation, since))

    def presence(self, change: Presence) -> None:  # see Listener
        user, count = change.user, change.connections
        counts = self._remote.setdefault(change.instance, {})
        before = counts.pop(user, 0)
        if count > 0:
            counts[user] = count
        elif not counts:
            del self._remote[change.instance]
        total = self._totals.pop(user, 0) - before + count
        if total > 0:
            self._totals[user] = total
        hub = self.ctx.hub
        if count > 0 and change.conversations is not None and hub.conversations(user) is None:
            hub.finish_conversations_load(user, change.conversations, keep=True)
        now = self.ctx.clock.now()
        if hub.set_remote(user, total, now + self.ctx.config.presence_grace_s):
            self._came_online(user)

    def instance_gone(self, instance: str) -> None:  # see Listener
        users = list(self._remote.get(instance, ()))
        if users:
            log.warning("instance %s is gone: its %d users go offline once their grace ends", instance, len(users))
        for user in users:
            self.presence(Presence(instance, user, 0))

    def snapshot(self, counts: dict[str, dict[UserId, int]], newer: set[tuple[str, UserId]]) -> None:  # see Listener
        for instance in list(self._remote):
            if instance not in counts:
                self.instance_gone(instance)
        for instance, users in counts.items():
            known = self._remote.get(instance, {})
            for user in set(known) | set(users):
                if (instance, user) not in newer and known.get(user, 0) != users.get(user, 0):
                    self.presence(Presence(instance, user, users.get(user, 0)))

    def link_changed(self, up: bool) -> None:  # see Listener
        if up:
            if self._was_down:
                # What happened here while cut off reached no other instance: tell them to look.
                self.broker.send({"k": Kind.RELINKED.value}, b"")
            self._relink(own=self._was_down)
        else:
            self._was_down = True
            self.counters["link_losses"] += 1

    def _relink(self, *, own: bool) -> None:
        """Catch up after this instance's link, or another's (*own* False), was down."""
        if self._relinking is not None:
            self._relink_again = self._relink_again or (own and "own") or "other"
            return
        self._relinking = self.ctx.start(self._relinked(own=own))

    async def _relinked(self, *, own: bool) -> None:
        try:
            # Membership may have changed meanwhile, and nothing told this instance: first who
            # is still a member, then what they missed.
            await self._recheck_members(own=own)
            lines = {c: line for c, line in self._lines.items() if not line.busy}
            if lines:
                await self._catch_up(lines)
        finally:
            self._relinking = None
            again, self._relink_again = self._relink_again, None
            if again is not None:
                self._relink(own=again == "own")

    async def _recheck_joins(self) -> None:
        """Read the conversations of the users connected here; add those they joined
        elsewhere while nothing could say so (the clients learn of them from a list or sync)."""
        ctx = self.ctx
        hub = ctx.hub
        users = hub.local_users()
        for i in range(0, len(users), _RECHECK_USERS):
            chunk = users[i : i + _RECHECK_USERS]
            found = await asyncio.gather(*(ctx.store.conversation_ids(u) for u in chunk), return_exceptions=True)
            for user, conversations in zip(chunk, found, strict=True):
                if isinstance(conversations, BaseException):
                    log.warning("could not recheck the conversations of a user: %s", conversations)
                    continue
                known = hub.conversations(user)
                for conversation in conversations:
                    if known is not None and conversation not in known:
                        hub.add_member(conversation, user)

    async def _recheck_members(self, *, own: bool) -> None:
        """Forget cached member sets; take out of each followed conversation the users here
        who left it meanwhile (they are told, as if live); and, after this instance's own link
        was down, follow the conversations its users joined meanwhile."""
        ctx = self.ctx
        hub = ctx.hub
        hub.drop_cached_members()
        if own:
            await self._recheck_joins()
        followed = hub.followed()
        for i in range(0, len(followed), _RECHECK_CHUNK):
            chunk = followed[i : i + _RECHECK_CHUNK]
            try:
                members = await ctx.store.members_of(chunk)
            except StoreError as exc:
                log.warning("could not recheck the members of %d conversations: %s", len(chunk), exc)
                continue
            for conversation in chunk:
                now = set(members.get(conversation, ()))
                for user in [u for u in hub.here(conversation) if u not in now]:
                    hub.remove_member(conversation, user)
                    notice = {"conversation_id": conversation, "user_id": user}
                    ctx.to_members([user], wire.encode(EventType.MEMBER_REMOVED, notice))
        await self._reconcile_now()

    def sizes(self) -> dict[str, int]:
        """How many entries the cluster's tables hold (read-only, for `/metrics`; all 0 for a
        single process): delivery lines of followed conversations, other instances' connection
        counts, and joins and admissions under way."""
        return {
            "cluster_lines": len(self._lines),
            "cluster_remote_instances": len(self._remote),
            "cluster_remote_users": len(self._totals),
            "cluster_joined_at": len(self._joined_at),
            "cluster_pending": len(self._pending),
        }

    @property
    def reachable(self) -> bool:
        """Whether what is sent now reaches every other instance (always, for a single process)."""
        return not self.active or self.broker.up

    def remote_connections(self, user: UserId) -> int:
        """The user's connections on other instances, as this one knows them."""
        return self._totals.get(user, 0)

    @property
    def remote_users(self) -> int:
        """Users connected to other instances, as this one knows them."""
        return len(self._totals)

    @property
    def followed(self) -> int:
        """Conversations followed."""
        return len(self._lines)


def _seq(waiting: _Waiting) -> int:
    return waiting[0]


def _contiguous(line: _Line) -> bool:
    """Whether the waiting messages continue the line with no seq missing."""
    last = line.last or 0
    ahead = {w[0] for w in line.waiting if w[0] > last}
    return bool(ahead) and max(ahead) - last == len(ahead)

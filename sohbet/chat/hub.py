"""Who is connected, who belongs where, and the small per-user state of the chat protocol.

Layer: domain. Imports only the standard library and the chat ids. Pure and synchronous: no
coroutine can interleave with a mutation, so nothing here needs a lock, and time always comes
in as an argument.

The hub knows users by the connections it holds (`attach`/`detach`) and, for scale-out, by
connections other instances report (`set_remote`): presence counts both. Membership is a cache
the chat service fills from storage and keeps current as it changes memberships itself.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Final, Generic, TypeVar

from sohbet.chat.ids import ConversationId, UserId

__all__ = ["Hub"]

C = TypeVar("C")  # a connection handle; hashed by identity
#: A conversation's connections are kept between fan-outs from this many on: fewer cost less to
#: find again than to keep (a direct conversation's two members are two lookups).
FANOUT_CACHE_MIN: Final = 16
#: Connections held in all the kept lists before they are all dropped (8 bytes each: 8 MiB).
FANOUT_CACHE_MAX: Final = 1 << 20
_NOBODY: frozenset[UserId] = frozenset()
_NOBODY_SET: set[UserId] = set()  # returned, never mutated: a set, so callers get one type


class Hub(Generic[C]):
    """Connections by user, members by conversation, presence and typing state."""

    def __init__(self, max_cached_members: int = 0, *, track_here: bool = False) -> None:
        """Args:
        max_cached_members: member entries the cache may hold over all conversations before
            the least recently used sets are dropped; 0 means no bound.
        track_here: record which conversations gain or lose their last member connected here
            (`take_here_changes`): what a cluster instance follows on the broker.
        """
        # A tuple per user, not a set: most users have one connection, and a one-element set
        # costs four times the memory (an idle connection's footprint is what a server has
        # most of); a user's connections are few (`max_connections_per_user`).
        self._connections: dict[UserId, tuple[C, ...]] = {}
        self._remote: dict[UserId, int] = {}
        self._members: OrderedDict[ConversationId, set[UserId]] = OrderedDict()
        self._cached_count = 0
        self._max_cached_members = max_cached_members
        self._conversations: dict[UserId, set[ConversationId]] = {}
        self._present: dict[ConversationId, set[UserId]] = {}
        self._member_changes: dict[ConversationId, dict[UserId, bool]] = {}
        # Removals made in the cache whose storage has not committed yet (how many of each): a
        # load that begins meanwhile may read the leaver from storage, and must not keep them.
        self._removing: dict[ConversationId, dict[UserId, int]] = {}
        self._conversation_changes: dict[UserId, dict[ConversationId, bool]] = {}
        self._grace: dict[UserId, float] = {}
        self._typing: dict[tuple[UserId, ConversationId], float] = {}
        # Conversations by the members connected *here* whose conversations are loaded (a
        # cluster instance receives a conversation's events while this is not empty).
        self._here: dict[ConversationId, set[UserId]] = {}
        self._here_changes: set[ConversationId] | None = set() if track_here else None
        # Each conversation's local connections as the last fan-out found them, from its
        # members (one process) or from `_here` (a cluster instance). Derived from
        # `_connections`, `_members` and `_here` alone, and dropped whole at any write to one of
        # them: a stale list would deliver to a leaver, and writes are rare next to messages.
        self._fanout: dict[ConversationId, list[C]] = {}
        self._fanout_here: dict[ConversationId, list[C]] = {}
        self._fanout_count = 0

    # -- connections and presence -------------------------------------------------------------

    def attach(self, user: UserId, conn: C) -> bool:
        """Add a connection; return True if the user has just come online."""
        came_online = not self.is_online(user)
        conns = self._connections.get(user)
        if conns is None or conn not in conns:
            self._changed()
        if conns is None:
            self._connections[user] = (conn,)
            for conversation in self._conversations.get(user, ()):
                self._enter_here(conversation, user)
        elif conn not in conns:
            self._connections[user] = (*conns, conn)
        self._grace.pop(user, None)  # back within the grace period: never went offline
        return came_online

    def detach(self, user: UserId, conn: C, grace_until: float) -> bool:
        """Remove a connection; return True if it was the user's last anywhere.

        The user then stays online until *grace_until* (see `expired_graces`), so a quick
        reconnect or a deploy does not flap their presence.
        """
        conns = self._connections.get(user)
        if conns is None or conn not in conns:
            return False
        self._changed()
        if len(conns) > 1:
            self._connections[user] = tuple(c for c in conns if c is not conn)
            return False
        del self._connections[user]
        for conversation in self._conversations.get(user, ()):
            self._leave_here(conversation, user)
        if self._remote.get(user):
            return False
        self._grace[user] = grace_until
        return True

    def set_remote(self, user: UserId, count: int, grace_until: float) -> bool:
        """Record how many connections *user* has on other instances; True if now online.

        When the last remote connection goes and none is here, the user stays online until
        *grace_until*, as after a local one (`detach`)."""
        was_online = self.is_online(user)
        if count > 0:
            self._remote[user] = count
            self._grace.pop(user, None)
        elif self._remote.pop(user, None) is not None and user not in self._connections:
            self._grace[user] = grace_until
        return not was_online and self.is_online(user)

    def here(self, conversation: ConversationId) -> set[UserId]:
        """The members of *conversation* connected here (of those whose conversations are
        loaded: every admitted connection's user, in a cluster). A live view: do not mutate."""
        return self._here.get(conversation) or _NOBODY_SET

    def followed(self) -> list[ConversationId]:
        """The conversations with a member connected here."""
        return list(self._here)

    def drop_cached_members(self) -> None:
        """Forget every cached member set (a cluster instance that may have missed membership
        changes): they are loaded again when needed."""
        self._members.clear()
        self._cached_count = 0
        self._changed()

    @property
    def here_changed(self) -> bool:
        """Whether `take_here_changes` has anything to take."""
        return bool(self._here_changes)

    def take_here_changes(self) -> set[ConversationId]:
        """The conversations that gained their first or lost their last member connected here
        since the last call (some may have done both: check `here`)."""
        changes = self._here_changes
        if not changes:
            return set()
        self._here_changes = set()
        return changes

    def expired_graces(self, now: float) -> list[UserId]:
        """Users whose grace period ended by *now*: they are offline from here on.

        Their conversation sets stay until `forget`, so the caller can still find their contacts.
        """
        gone = [user for user, until in self._grace.items() if until <= now]
        for user in gone:
            del self._grace[user]
        return gone

    def extend_graces(self, users: Iterable[UserId], until: float) -> None:
        """Give *users*, whose grace `expired_graces` just ended, one until *until*: their
        `user:offline` waits for a later tick (the caller had done enough for this one). They
        go back first in line, ahead of everyone whose grace ends later: behind them, a steady
        stream of departures could keep them online forever."""
        rest = self._grace
        self._grace = dict.fromkeys(users, until)
        self._grace.update(rest)

    def forget(self, user: UserId) -> None:
        """Drop what is cached for a user who is offline, and member sets nobody here needs."""
        if not self.is_online(user):
            for conversation in self._conversations.pop(user, ()):
                self._leave_present(conversation, user)

    def is_online(self, user: UserId) -> bool:
        """Connected here or elsewhere, or within the grace period after the last connection."""
        return user in self._connections or user in self._remote or user in self._grace

    def connections(self, user: UserId) -> tuple[C, ...]:
        """The user's connections on this instance, oldest first."""
        return self._connections.get(user, ())

    def connections_of(self, users: Iterable[UserId]) -> list[C]:
        """Every local connection of every user in *users* (a list: it is built for a fan-out,
        where a comprehension costs half of what a generator's yields do per recipient)."""
        table = self._connections
        return [c for user in users if (conns := table.get(user)) for c in conns]

    def member_connections(self, conversation: ConversationId) -> Sequence[C]:
        """Every local connection of the conversation's cached members (none when they are not
        cached): whom a message fans out to. Read-only: it may be kept for the next message.

        Why kept: finding a 10,000-member group's connections (a set walk, a dict lookup and a
        tuple per member) was 5.6% of a fan-out's CPU samples (`perf`; benchmarks/README.md,
        "Seventh pass")."""
        return self._kept(self._fanout, conversation, self._members.get(conversation, ()))

    def here_connections(self, conversation: ConversationId) -> Sequence[C]:
        """`member_connections` for a cluster instance: the local connections of the members
        connected here (`here`), whose members need not be cached. Read-only, as there."""
        return self._kept(self._fanout_here, conversation, self._here.get(conversation, ()))

    def _kept(
        self, kept: dict[ConversationId, list[C]], conversation: ConversationId, users: Iterable[UserId]
    ) -> list[C]:
        found = kept.get(conversation)
        if found is None:
            found = self.connections_of(users)
            if len(found) >= FANOUT_CACHE_MIN:
                # By address, not in the member set's hash order. In a process that accepted its
                # connections in turn, that is the order they were made, and the kernel then
                # walks its descriptor table and socket objects in order too: a 10,000-member
                # fan-out cost 14% less CPU a delivery (benchmarks/README.md, "Seventh pass").
                # After much churn addresses are reused and the order only approximates that.
                found.sort(key=id)
                if self._fanout_count + len(found) > FANOUT_CACHE_MAX:
                    self._changed()
                kept[conversation] = found
                self._fanout_count += len(found)
        return found

    def unconnected(self, users: Iterable[UserId]) -> list[UserId]:
        """The users in *users* with no open connection, here or on another instance (a user in
        the grace period has none): whom a push notification must reach instead."""
        local, remote = self._connections, self._remote
        return [u for u in users if u not in local and u not in remote]

    def all_connections(self) -> list[C]:
        """Every local connection (an announcement to everyone)."""
        return [c for conns in self._connections.values() for c in conns]

    def online_users(self, after: UserId | None, limit: int) -> list[UserId]:
        """The first *limit* users online (as `is_online` counts them) whose ids sort after
        *after*, in id order: a page of who is online."""
        users = self._connections.keys() | self._remote.keys() | self._grace.keys()
        return heapq.nsmallest(limit, (u for u in users if after is None or u > after))

    @property
    def online_count(self) -> int:
        """Users online, as `is_online` counts them."""
        return len(self._connections.keys() | self._remote.keys() | self._grace.keys())

    def local_users(self) -> list[UserId]:
        """The users with a connection here."""
        return list(self._connections)

    @property
    def has_connections(self) -> bool:
        """Whether any connection is open here."""
        return bool(self._connections)

    @property
    def connection_count(self) -> int:
        """Local connections in all."""
        return sum(len(c) for c in self._connections.values())

    def sizes(self) -> dict[str, int]:
        """How many entries each of the hub's tables holds (read-only, for `/metrics`): once
        every user has left and their grace periods have ended, all of them are back at 0, so a
        count that stays up is an entry never removed. About a millisecond for 10,000 users."""
        return {
            "hub_users": len(self._connections),
            "hub_connections": self.connection_count,
            "hub_remote_users": len(self._remote),
            "hub_member_sets": len(self._members),
            "hub_member_entries": self._cached_count,
            "hub_user_conversation_sets": len(self._conversations),
            "hub_present_conversations": len(self._present),
            "hub_member_loads": len(self._member_changes),
            "hub_removals_storing": len(self._removing),
            "hub_conversation_loads": len(self._conversation_changes),
            "hub_grace": len(self._grace),
            "hub_typing": len(self._typing),
            "hub_followed": len(self._here),
            "hub_follow_changes": len(self._here_changes or ()),
            "hub_fanout_lists": len(self._fanout) + len(self._fanout_here),
            "hub_fanout_entries": self._fanout_count,
        }

    @property
    def is_empty(self) -> bool:
        """No connection and no pending grace: nothing would be delivered or announced."""
        return not self._connections and not self._grace

    # -- membership ---------------------------------------------------------------------------
    #
    # Two caches, both filled from storage on demand: the members of a conversation (for
    # fan-out) and the conversations of a user who is online or in their grace period (for
    # membership checks and presence). `_present` indexes the second by conversation: who, of
    # the users whose conversations are loaded, is in it. Announcing presence then costs the
    # online contacts, not every member of every group, and a member set with nobody present
    # is dropped. The member sets are also bounded in all (`max_cached_members`, least recently
    # used first), so no number of large groups can grow the cache without limit.
    #
    # A load awaits storage while memberships may change; the hub records what changed for
    # each load in flight and applies it when the load lands, so a read that began before a
    # leave cannot put the leaver back.

    def members(self, conversation: ConversationId) -> set[UserId] | None:
        """The cached members of a conversation, or None when they are not loaded."""
        members = self._members.get(conversation)
        if members is not None:
            self._members.move_to_end(conversation)
        return members

    def is_member(self, user: UserId, conversation: ConversationId) -> bool | None:
        """Whether *user* is a member, from what is cached; None when nothing cached tells.

        A no comes only from the user's own set, never from a cached member set: otherwise a
        stranger would be refused at once where a conversation is busy (its members cached)
        and after a load where it is not, and the time of a refusal would tell which
        conversations are in use. A non-member's answer depends only on the asker."""
        members = self._members.get(conversation)
        if members is not None and user in members:
            return True
        convs = self._conversations.get(user)
        return None if convs is None else conversation in convs

    def begin_members_load(self, conversation: ConversationId) -> None:
        """A load of the conversation's members from storage starts: record changes meanwhile,
        starting with the removals storage may not show yet (`hold_removal`)."""
        changes = self._member_changes.setdefault(conversation, {})
        for user in self._removing.get(conversation, ()):
            changes[user] = False

    def hold_removal(self, conversation: ConversationId, user: UserId) -> None:
        """*user*'s removal, already made in the cache (`remove_member`), is being stored: until
        `release_removal`, every load that begins (the members, or the user's conversations)
        counts it as made."""
        held = self._removing.setdefault(conversation, {})
        held[user] = held.get(user, 0) + 1

    def release_removal(self, conversation: ConversationId, user: UserId) -> None:
        """The removal held by `hold_removal` is stored (or failed and was undone in the cache):
        loads that begin from now on read storage as it is."""
        held = self._removing[conversation]
        if held[user] > 1:
            held[user] -= 1
            return
        del held[user]
        if not held:
            del self._removing[conversation]

    def finish_members_load(self, conversation: ConversationId, loaded: Iterable[UserId]) -> set[UserId]:
        """The load landed: cache the members with every change made since it began.

        Returns the members (empty, and nothing cached, for a conversation without any).
        """
        changes = self._member_changes.pop(conversation, {})
        cached = self._members.get(conversation)
        if cached is not None:
            return cached  # cached meanwhile (a create): that copy is current
        members = set(loaded)
        for user, joined in changes.items():
            if joined:
                members.add(user)
            else:
                members.discard(user)
        if members:
            self._cache_members(conversation, members)
        return members

    def abandon_members_load(self, conversation: ConversationId) -> None:
        """The load failed: stop recording for it."""
        self._member_changes.pop(conversation, None)

    def set_members(self, conversation: ConversationId, users: Iterable[UserId]) -> set[UserId]:
        """Cache the full member list of a conversation just created."""
        members = set(users)
        for user in members:
            self._joined(conversation, user)
        self._drop_members(conversation)
        self._cache_members(conversation, members)
        return members

    def add_member(self, conversation: ConversationId, user: UserId) -> None:
        """Record a new member, in every cache."""
        members = self._members.get(conversation)
        if members is not None and user not in members:
            members.add(user)
            self._cached_count += 1
            self._changed()
        self._joined(conversation, user)

    def remove_member(self, conversation: ConversationId, user: UserId) -> None:
        """Record that a member left; they stop receiving the conversation at once."""
        members = self._members.get(conversation)
        if members is not None and user in members:
            members.discard(user)
            self._cached_count -= 1
            self._changed()
        if (changes := self._member_changes.get(conversation)) is not None:
            changes[user] = False
        if (pending := self._conversation_changes.get(user)) is not None:
            pending[conversation] = False
        convs = self._conversations.get(user)
        if convs is not None and conversation in convs:  # a second leave of the same user: done
            convs.discard(conversation)
            self._leave_present(conversation, user)
            if user in self._connections:
                self._leave_here(conversation, user)

    def conversations(self, user: UserId) -> set[ConversationId] | None:
        """The conversations of an online user, or None when not loaded."""
        return self._conversations.get(user)

    def reload_conversations(self, user: UserId, loaded: Iterable[ConversationId]) -> set[ConversationId]:
        """Cache the user's conversations as just read from storage: what a cached set had
        wrong is corrected in every cache (as joins and leaves would have). Returns the set."""
        fresh = set(loaded) - self._held_removals(user)  # read before those commit, maybe
        cached = self._conversations.get(user)
        if cached is None:
            return self.finish_conversations_load(user, fresh, keep=True)
        for conversation in list(cached - fresh):
            self.remove_member(conversation, user)
        for conversation in fresh - cached:
            self.add_member(conversation, user)
        return cached

    def begin_conversations_load(self, user: UserId) -> None:
        """A load of the user's conversations starts: record membership changes meanwhile,
        starting with their removals storage may not show yet (`hold_removal`)."""
        changes = self._conversation_changes.setdefault(user, {})
        for conversation in self._held_removals(user):
            changes[conversation] = False

    def _held_removals(self, user: UserId) -> set[ConversationId]:
        """The conversations *user*'s removal from is being stored (`hold_removal`)."""
        return {c for c, held in self._removing.items() if user in held} if self._removing else set()

    def finish_conversations_load(
        self, user: UserId, loaded: Iterable[ConversationId], *, keep: bool
    ) -> set[ConversationId]:
        """The load landed: the user's conversations with every change made since it began,
        cached when *keep* (the user is online here)."""
        changes = self._conversation_changes.pop(user, {})
        cached = self._conversations.get(user)
        if cached is not None:
            return cached
        convs = set(loaded)
        for conversation, joined in changes.items():
            if joined:
                convs.add(conversation)
            else:
                convs.discard(conversation)
        if keep:
            self._conversations[user] = convs
            present = self._present
            connected = user in self._connections
            for conversation in convs:
                present.setdefault(conversation, set()).add(user)
                if connected:
                    self._enter_here(conversation, user)
        return convs

    def abandon_conversations_load(self, user: UserId) -> None:
        """The load failed: stop recording for it."""
        self._conversation_changes.pop(user, None)

    def online_contacts(self, user: UserId, conversations: Iterable[ConversationId] | None = None) -> set[UserId]:
        """The users, online here or in their grace period, who share a conversation with
        *user* (not the user themself): whom to tell that *user* came or went. *conversations*
        are the user's, when they are not cached."""
        found: set[UserId] = set()
        present = self._present
        for conversation in self._conversations.get(user, ()) if conversations is None else conversations:
            found |= present.get(conversation, _NOBODY)
        found.discard(user)
        return found

    @property
    def cached_members(self) -> int:
        """Member entries held in the cache, over all conversations."""
        return self._cached_count

    @property
    def cached_conversations(self) -> int:
        """Conversations whose members are cached."""
        return len(self._members)

    def _joined(self, conversation: ConversationId, user: UserId) -> None:
        if (changes := self._member_changes.get(conversation)) is not None:
            changes[user] = True
        if (pending := self._conversation_changes.get(user)) is not None:
            pending[conversation] = True
        convs = self._conversations.get(user)
        if convs is not None and conversation not in convs:
            convs.add(conversation)
            self._present.setdefault(conversation, set()).add(user)
            if user in self._connections:
                self._enter_here(conversation, user)

    def _enter_here(self, conversation: ConversationId, user: UserId) -> None:
        if self._here_changes is None:
            return  # one process: nothing to follow, and nothing to spend on it
        here = self._here.get(conversation)
        if here is None:
            here = self._here[conversation] = set()
            self._here_changes.add(conversation)
        here.add(user)
        self._changed()

    def _leave_here(self, conversation: ConversationId, user: UserId) -> None:
        here = self._here.get(conversation)
        if here is not None:
            here.discard(user)
            self._changed()
            if not here:
                del self._here[conversation]
                assert self._here_changes is not None  # only filled while tracking
                self._here_changes.add(conversation)

    def _leave_present(self, conversation: ConversationId, user: UserId) -> None:
        # Called only for a conversation in the user's loaded set, so the user is indexed here.
        present = self._present[conversation]
        present.discard(user)
        if not present:
            # Nobody here needs this conversation any more: its members can go too.
            del self._present[conversation]
            self._drop_members(conversation)

    def _changed(self) -> None:
        """A connection or a cached membership changed: no kept fan-out list holds."""
        if self._fanout or self._fanout_here:
            self._fanout.clear()
            self._fanout_here.clear()
            self._fanout_count = 0

    def _cache_members(self, conversation: ConversationId, members: set[UserId]) -> None:
        self._members[conversation] = members
        self._cached_count += len(members)
        limit = self._max_cached_members
        while limit and self._cached_count > limit and len(self._members) > 1:
            oldest = next(iter(self._members))
            self._drop_members(oldest)

    def _drop_members(self, conversation: ConversationId) -> None:
        members = self._members.pop(conversation, None)
        if members is not None:
            self._cached_count -= len(members)
            self._changed()

    # -- typing -------------------------------------------------------------------------------

    def allow_typing(self, user: UserId, conversation: ConversationId, now: float, interval_s: float) -> bool:
        """Whether to forward a typing notice: at most one per *interval_s*, counted from the
        last one forwarded, so continuous typing is re-announced every interval."""
        key = (user, conversation)
        last = self._typing.get(key)
        if last is not None and now - last < interval_s:
            return False
        self._typing[key] = now
        return True

    def forget_typing(self, before: float) -> None:
        """Drop typing state older than *before* (it no longer throttles anything)."""
        self._typing = {k: t for k, t in self._typing.items() if t >= before}

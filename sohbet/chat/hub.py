"""Who is connected, who belongs where, and the small per-user state of the chat protocol.

Layer: domain. Imports only the standard library and the chat ids. Pure and synchronous: no
coroutine can interleave with a mutation, so nothing here needs a lock, and time always comes
in as an argument.

The hub knows users by the connections it holds (`attach`/`detach`) and, for scale-out, by
connections other instances report (`set_remote`): presence counts both. Membership is a cache
the chat service fills from storage and keeps current as it changes memberships itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from sohbet.chat.ids import ConversationId, UserId

__all__ = ["Hub"]

C = TypeVar("C")  # a connection handle; hashed by identity


class Hub(Generic[C]):
    """Connections by user, members by conversation, presence, typing and send-rate state."""

    def __init__(self) -> None:
        self._connections: dict[UserId, set[C]] = {}
        self._remote: dict[UserId, int] = {}
        self._members: dict[ConversationId, set[UserId]] = {}
        self._conversations: dict[UserId, set[ConversationId]] = {}
        self._grace: dict[UserId, float] = {}
        self._typing: dict[tuple[UserId, ConversationId], float] = {}
        self._buckets: dict[UserId, tuple[float, float]] = {}

    # -- connections and presence -------------------------------------------------------------

    def attach(self, user: UserId, conn: C) -> bool:
        """Add a connection; return True if the user has just come online."""
        came_online = not self.is_online(user)
        self._connections.setdefault(user, set()).add(conn)
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
        conns.discard(conn)
        if conns:
            return False
        del self._connections[user]
        if self._remote.get(user):
            return False
        self._grace[user] = grace_until
        return True

    def set_remote(self, user: UserId, count: int) -> bool:
        """Record how many connections *user* has on other instances; True if now online."""
        was_online = self.is_online(user)
        if count > 0:
            self._remote[user] = count
            self._grace.pop(user, None)
        else:
            self._remote.pop(user, None)
        return not was_online and self.is_online(user)

    def expired_graces(self, now: float) -> list[UserId]:
        """Users whose grace period ended by *now*: they are offline from here on.

        Their conversation sets stay until `forget`, so the caller can still find their contacts.
        """
        gone = [user for user, until in self._grace.items() if until <= now]
        for user in gone:
            del self._grace[user]
        return gone

    def forget(self, user: UserId) -> None:
        """Drop what is cached for a user who is offline."""
        if not self.is_online(user):
            self._conversations.pop(user, None)

    def is_online(self, user: UserId) -> bool:
        """Connected here or elsewhere, or within the grace period after the last connection."""
        return user in self._connections or user in self._remote or user in self._grace

    def connections(self, user: UserId) -> set[C]:
        """The user's connections on this instance (a live view: do not mutate)."""
        return self._connections.get(user) or set()

    def connections_of(self, users: Iterable[UserId]) -> list[C]:
        """Every local connection of every user in *users* (a list: it is built for a fan-out,
        where a comprehension costs half of what a generator's yields do per recipient)."""
        table = self._connections
        return [c for user in users if (conns := table.get(user)) for c in conns]

    @property
    def connection_count(self) -> int:
        """Local connections in all."""
        return sum(len(c) for c in self._connections.values())

    @property
    def is_empty(self) -> bool:
        """No connection and no pending grace: nothing would be delivered or announced."""
        return not self._connections and not self._grace

    # -- membership ---------------------------------------------------------------------------

    def members(self, conversation: ConversationId) -> set[UserId] | None:
        """The cached members of a conversation, or None when they are not loaded."""
        return self._members.get(conversation)

    def set_members(self, conversation: ConversationId, users: Iterable[UserId]) -> set[UserId]:
        """Cache a conversation's full member list."""
        members = self._members[conversation] = set(users)
        for user in members:
            convs = self._conversations.get(user)
            if convs is not None:
                convs.add(conversation)
        return members

    def add_member(self, conversation: ConversationId, user: UserId) -> None:
        """Record a new member, in the cache and in the user's conversation set."""
        members = self._members.get(conversation)
        if members is not None:
            members.add(user)
        convs = self._conversations.get(user)
        if convs is not None:
            convs.add(conversation)

    def remove_member(self, conversation: ConversationId, user: UserId) -> None:
        """Record that a member left; they stop receiving the conversation at once."""
        members = self._members.get(conversation)
        if members is not None:
            members.discard(user)
        convs = self._conversations.get(user)
        if convs is not None:
            convs.discard(conversation)

    def conversations(self, user: UserId) -> set[ConversationId] | None:
        """The conversations of an online user, or None when not loaded."""
        return self._conversations.get(user)

    def set_conversations(self, user: UserId, conversations: Iterable[ConversationId]) -> None:
        """Cache the conversations of a user (loaded when they come online)."""
        self._conversations[user] = set(conversations)

    def contacts(self, user: UserId) -> set[UserId]:
        """Users who share a loaded conversation with *user* (not the user themself)."""
        found: set[UserId] = set()
        for conversation in self._conversations.get(user, ()):
            members = self._members.get(conversation)
            if members:
                found |= members
        found.discard(user)
        return found

    # -- typing and send rate -----------------------------------------------------------------

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

    def take_send_token(self, user: UserId, now: float, rate_per_s: float, burst: int) -> int:
        """Spend one `chat:send` token from the user's bucket (shared by all their connections).

        Returns:
            0 when allowed; otherwise the milliseconds until a token is available.
        """
        if rate_per_s <= 0:
            return 0
        tokens, last = self._buckets.get(user, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate_per_s)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return max(1, int((1.0 - tokens) / rate_per_s * 1000 + 0.999))
        self._buckets[user] = (tokens - 1.0, now)
        return 0

    def refund_send_token(self, user: UserId, burst: int) -> None:
        """Give back a token spent on a send that turned out to be an idempotent replay."""
        bucket = self._buckets.get(user)
        if bucket is not None:
            self._buckets[user] = (min(float(burst), bucket[0] + 1.0), bucket[1])

    def forget_buckets(self, idle_since: float, rate_per_s: float, burst: int) -> None:
        """Drop buckets full again since *idle_since*: a full bucket is the default."""
        if rate_per_s <= 0:
            self._buckets.clear()
            return
        refill_s = burst / rate_per_s
        self._buckets = {u: b for u, b in self._buckets.items() if b[1] + refill_s > idle_since}

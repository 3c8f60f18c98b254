"""How instances of one deployment tell each other what happened: the broker interface.

Layer: broker. The service sees only `Broker` and implements `Listener`; `sohbet.app` picks the
implementation: `LocalBroker` for a single process (nobody else to tell), `RedisBroker` for a
cluster (docs/cluster.md).

What crosses between instances is an *event*: a small header (`Header`, a JSON object with one
of the `Kind`s) and the bytes of the WebSocket message the sending instance already encoded for
its own connections, so a message is serialised once however many instances deliver it.
Conversation traffic (messages, typing, reads) goes to the conversation's channel, which an
instance follows only while one of its connected users is a member; everything else (new
conversations, membership changes, application events, disconnects) is rare and goes to every
instance. Presence is a registry: connection counts per user per instance, kept by the broker,
changes announced to every instance as `Presence` records.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

from sohbet.chat.ids import ConversationId, UserId

__all__ = ["REFUSED", "Broker", "Header", "Kind", "Listener", "Presence"]

#: What `Broker.admit` answers for a connection over the user's limit across the cluster.
REFUSED: Final = -1

#: An event's header: `k` (a `Kind`), `i` (the sending instance) and the kind's own fields.
Header: TypeAlias = dict[str, Any]


class Kind(enum.StrEnum):
    """The kinds of event, and the header fields each carries besides `k` and `i`."""

    MESSAGE = "m"  #: `c` conversation, `s` seq: a `chat:message`, delivered in seq order
    TYPING = "t"  #: `c`, `u` the typist (not told of their own typing)
    READ = "r"  #: `c`: a `chat:read`
    CREATED = "n"  #: `c`, `m` who joined (`new`: all of them), `s` its last seq: `conversation:created`
    MEMBER_ADDED = "a"  #: `c`, `u`: `conversation:member_added`
    MEMBER_REMOVED = "x"  #: `c`, `u`: `conversation:member_removed`
    PUBLISH = "p"  #: `us` the users named: an `app:*` event from `POST /api/publish`
    BROADCAST = "b"  #: an `app:*` event for every connection
    DISCONNECT = "d"  #: `u`, `code`, `reason`: close every connection of a user
    RELINKED = "l"  #: instance `i` was cut off and is back: what it did meanwhile reached nobody
    # Kept inside the broker (the listener hears of them as `presence` and `instance_gone`):
    PRESENCE = "u"  #: `u`, `n` its connections on instance `i`, `cs` its conversations if known
    GONE = "g"  #: instance `i` left or was found dead: none of its connections remain


@dataclass(frozen=True, slots=True)
class Presence:
    """An instance's connection count of a user changed (0: none left there)."""

    instance: str
    user: UserId
    connections: int
    #: The user's conversations, when the instance knows them: whom to tell the user came or went.
    conversations: tuple[ConversationId, ...] | None = None


class Listener(Protocol):
    """What the broker tells the service (on the event loop; none of these may block)."""

    def event(self, header: Header, data: bytes) -> None:
        """Another instance sent an event this instance follows."""

    def presence(self, change: Presence) -> None:
        """Another instance's connection count of a user changed."""

    def snapshot(self, counts: dict[str, dict[UserId, int]], newer: set[tuple[str, UserId]]) -> None:
        """The whole registry of the other live instances (after a (re)connection): the
        connection counts by instance and user; instances absent from it are gone, and so
        are users absent from their instance's counts, except the `(instance, user)` entries
        in *newer*, whose `presence` arrived after the link came up and is newer than this."""

    def instance_gone(self, instance: str) -> None:
        """Another instance left, or stopped renewing its heartbeat: none of its connections remain."""

    def link_changed(self, up: bool) -> None:
        """The broker lost its link (live delivery between instances paused) or got it back
        (after `snapshot`: the service catches up on what it missed)."""


class Broker(Protocol):
    """The link between the instances of one deployment."""

    @property
    def instance_id(self) -> str:
        """This instance's name, in logs and metrics."""
        ...

    @property
    def clustered(self) -> bool:
        """Whether other instances may exist (False: every method below is a no-op)."""
        ...

    @property
    def up(self) -> bool:
        """Whether the link is up (a single process is always up)."""
        ...

    async def start(self, listener: Listener) -> None:
        """Connect, register this instance and start listening (returns even when the broker
        is unreachable: it keeps trying, and says so through `link_changed`)."""

    async def stop(self) -> None:
        """Leave: this instance's users are announced gone at once, not after a timeout."""

    def send(self, header: Header, data: bytes) -> None:
        """Send an event to the instances that follow its conversation (or to all, for the
        kinds without one); fire and forget: pub/sub is at-most-once."""

    async def follow(self, conversations: Iterable[ConversationId]) -> None:
        """Receive these conversations' events from now on (returns once the broker confirms,
        or at once while the link is down: following resumes with it)."""

    def unfollow(self, conversations: Iterable[ConversationId]) -> None:
        """Stop receiving these conversations' events."""

    async def refollow(self, conversations: Iterable[ConversationId]) -> None:
        """Subscribe again to conversations already followed, whose events went missing
        (harmless if the subscription was there)."""

    async def admit(self, user: UserId, limit: int, conversations: Iterable[ConversationId]) -> int | None:
        """Count a new connection of *user* against *limit* over all instances (0: none).

        Returns:
            The user's connections across the cluster with this one, `REFUSED` when that would
            exceed the limit, or None when the broker cannot tell (the link is down: the
            caller falls back on its own count).
        """

    def release(self, user: UserId, conversations: Iterable[ConversationId]) -> None:
        """A connection of *user* admitted by `admit` closed."""

    def stats(self) -> dict[str, int]:
        """Counters for the metrics endpoint (events sent and received, reconnections)."""

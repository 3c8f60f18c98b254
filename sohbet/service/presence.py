"""Presence: who is online, announced to the users who share a conversation with them.

Layer: service. Imports asyncio, the chat domain and the store interface.

A user comes online with their first connection: the ids of their conversations are loaded into
the hub (once, however many connections ask; never the members of those conversations), and
`user:online` goes to their contacts who are online here. They go offline when the grace period
after their last connection ends (`end_graces`, from the service's tick), so a quick reconnect or
a deploy does not flap.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from sohbet.chat import wire
from sohbet.chat.ids import UserId
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.service.context import Context, RequestHandler
from sohbet.service.session import Session

__all__ = ["OFFLINE_DELIVERIES_PER_TICK", "Presence"]

log = logging.getLogger("sohbet.chat")

#: `user:offline` deliveries one tick makes at most; the users past it are announced at the next
#: tick (half a second later). A thousand users leaving groups of a thousand at once would
#: otherwise hold the event loop for seconds in one callback (about 7 µs a delivery), and every
#: other connection's replies would wait behind them (found by benchmarks/soak.py).
OFFLINE_DELIVERIES_PER_TICK: Final = 10_000


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not load a user's conversations: %s", task.exception())


class Presence:
    """Online and offline announcements, and `presence:query`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[RequestType, RequestHandler]:
        """The requests this family answers."""
        return {RequestType.PRESENCE: self.ctx.spawn(self._presence)}

    def connected(self, user: UserId, came_online: bool) -> asyncio.Future[None] | None:
        """A connection of *user* opened: load their conversations if needed, announce them if new.

        Returns:
            The task that loads and announces, if one was needed (it logs its own failure).
        """
        if not came_online and self.ctx.hub.conversations(user) is not None:
            return None
        task = self.ctx.start(self._came_online(user, announce=came_online))
        task.add_done_callback(_log_failure)
        return task

    async def _came_online(self, user: UserId, *, announce: bool) -> None:
        ctx = self.ctx
        await ctx.conversations_of(user)  # only the ids: no member set is loaded to come online
        if announce and ctx.hub.is_online(user):
            ctx.to_members(ctx.hub.online_contacts(user), wire.encode(EventType.ONLINE, {"user_id": user}))

    def came_online_elsewhere(self, user: UserId) -> None:
        """*user* came online on another instance: tell their contacts connected here."""
        if not self.ctx.hub.has_connections:
            return  # nobody here to tell (an instance starting learns of everyone online)
        task = self.ctx.start(self._came_online(user, announce=True))
        task.add_done_callback(_log_failure)

    def end_graces(self, now: float) -> None:
        """Announce `user:offline` for everyone whose grace period ended by *now*, and forget them."""
        hub = self.ctx.hub
        budget = OFFLINE_DELIVERIES_PER_TICK
        expired = hub.expired_graces(now)
        for i, user in enumerate(expired):
            if budget <= 0:
                hub.extend_graces(expired[i:], now)  # still offline from now on: told at the next tick
                return
            if hub.conversations(user) is None:
                # Known only from another instance's registry, which does not say whom they
                # know: their conversations are read first.
                self.ctx.start(self._went_offline(user)).add_done_callback(_log_failure)
                budget -= 1
                continue
            budget -= (
                self.ctx.to_members(hub.online_contacts(user), wire.encode(EventType.OFFLINE, {"user_id": user})) or 1
            )
            hub.forget(user)

    async def _went_offline(self, user: UserId) -> None:
        ctx = self.ctx
        conversations = await ctx.conversations_of(user)
        if not ctx.hub.is_online(user):  # not back meanwhile
            contacts = ctx.hub.online_contacts(user, conversations)
            ctx.to_members(contacts, wire.encode(EventType.OFFLINE, {"user_id": user}))
            ctx.hub.forget(user)

    async def _presence(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        hub = ctx.hub
        query = wire.PresenceQuery.parse(envelope.payload, ctx.config.max_presence_query)
        ctx.spend(session, RequestType.PRESENCE)
        mine = await ctx.conversations_of(session.user)
        online = []
        # Only the users asked about, and of them only the online ones, are checked against
        # shared membership: the answer costs the query, not every member of every group.
        for user in dict.fromkeys(query.user_ids):
            if user != session.user and hub.is_online(user):
                theirs = await ctx.conversations_of(user)  # loaded for anyone online here
                if not mine.isdisjoint(theirs):
                    online.append(user)
        ctx.reply(session, EventType.PRESENCE, {"online": online}, envelope.ref)

"""Presence: who is online, announced to the users who share a conversation with them.

Layer: service. Imports asyncio, the chat domain and the store interface.

A user comes online with their first connection: their conversations and those conversations'
members are loaded into the hub (once, however many connections ask), and `user:online` goes to
their contacts. They go offline when the grace period after their last connection ends
(`end_graces`, from the service's tick), so a quick reconnect or a deploy does not flap.
"""

from __future__ import annotations

import asyncio
import logging

from sohbet.chat import wire
from sohbet.chat.ids import UserId
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.service.context import Context, RequestHandler
from sohbet.service.session import Session

__all__ = ["Presence"]

log = logging.getLogger("sohbet.chat")


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not load a user's contacts: %s", task.exception())


class Presence:
    """Online and offline announcements, and `presence:query`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._loading: dict[UserId, asyncio.Future[None]] = {}

    def handlers(self) -> dict[RequestType, RequestHandler]:
        """The requests this family answers."""
        return {RequestType.PRESENCE: self.ctx.spawn(self._presence)}

    def connected(self, user: UserId, came_online: bool) -> None:
        """A connection of *user* opened: load their contacts if needed, announce them if new."""
        if came_online or self.ctx.hub.conversations(user) is None:
            self._load_contacts(user, announce=came_online)

    def _load_contacts(self, user: UserId, *, announce: bool) -> asyncio.Future[None]:
        """Load a user's conversations and their members (once, however many ask), then
        announce the user to their contacts if they have just come online."""
        loading = self._loading.get(user)
        if loading is None or loading.done():
            loading = self._loading[user] = self.ctx.start(self._came_online(user, announce=announce))
            loading.add_done_callback(lambda _: self._loading.pop(user, None))
            loading.add_done_callback(_log_failure)
        return loading

    async def _came_online(self, user: UserId, *, announce: bool) -> None:
        ctx = self.ctx
        hub = ctx.hub
        conversations = await ctx.store.conversation_ids(user)
        missing = [cid for cid in conversations if hub.members(cid) is None]
        if missing:
            for cid, members in (await ctx.store.members_of(missing)).items():
                if hub.members(cid) is None:  # a send may have loaded it meanwhile
                    hub.set_members(cid, members)
        if not hub.is_online(user):
            return  # gone (and past the grace period) while loading: announce nothing, keep nothing
        hub.set_conversations(user, conversations)
        if announce:
            ctx.to_members(hub.contacts(user), wire.encode(EventType.ONLINE, {"user_id": user}))

    def end_graces(self, now: float) -> None:
        """Announce `user:offline` for everyone whose grace period ended by *now*, and forget them."""
        hub = self.ctx.hub
        for user in hub.expired_graces(now):
            self.ctx.to_members(hub.contacts(user), wire.encode(EventType.OFFLINE, {"user_id": user}))
            hub.forget(user)

    async def _presence(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        hub = ctx.hub
        query = wire.PresenceQuery.parse(envelope.payload, ctx.config.max_presence_query)
        if session.user in self._loading or hub.conversations(session.user) is None:
            await asyncio.shield(self._load_contacts(session.user, announce=False))
        visible = hub.contacts(session.user)
        online = [u for u in dict.fromkeys(query.user_ids) if u in visible and hub.is_online(u)]
        ctx.reply(session, EventType.PRESENCE, {"online": online}, envelope.ref)

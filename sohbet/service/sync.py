"""`sync`: everything a client missed while it was away, then where it now stands.

Layer: service. Imports asyncio, the chat domain and the store interface.

Nothing ever ages out: the client names its last seen seq per conversation and gets every
message after it, in seq order, within a per-conversation and a per-call budget; `complete:
false` sends it back for the rest. A replay waits for the client to read (`Socket.drained`), so
a long one keeps pace with it instead of piling up in memory and ending in a 4008.
"""

from __future__ import annotations

from typing import Final

from sohbet.chat import wire
from sohbet.chat.model import StoredMessage
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.service.context import Context, RequestHandler
from sohbet.service.session import Session

__all__ = ["Sync"]

_MESSAGE: Final = EventType.MESSAGE  # looked up once: it is sent per replayed message


class Sync:
    """Catching up after a reconnect."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[RequestType, RequestHandler]:
        """The requests this family answers."""
        return {RequestType.SYNC: self.ctx.spawn(self._sync)}

    async def _sync(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        store = ctx.store
        request = wire.SyncRequest.parse(envelope.payload)
        cfg = ctx.config
        mine = await store.conversation_ids(session.user)
        known = await store.last_seqs(mine)
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
            found = await store.messages_after(cid, after, limit + 1) if limit > 0 else []
            if limit <= 0 or len(found) > limit:
                # Cut short: report what was delivered, so the next call's cursor resumes there.
                complete = False
                found = found[:limit]
                highest[cid] = found[-1].seq if found else after
            budget -= len(found)
            await self._replay(session, found)
        for cid in mine:
            if cid not in request.cursors:
                newest, _ = await store.history(cid, None, cfg.sync_unnamed)
                await self._replay(session, newest)
        payload = {
            "conversations": {str(cid): seq for cid, seq in highest.items()},
            "forbidden": forbidden,
            "complete": complete,
        }
        ctx.reply(session, EventType.SYNC_DONE, payload, envelope.ref)

    async def _replay(self, session: Session, found: list[StoredMessage]) -> None:
        for message in found:
            if session.closed:
                return
            session.socket.send_text(wire.encode(_MESSAGE, {"message": wire.message_object(message)}))
            await session.socket.drained()  # a long replay waits for the client to read

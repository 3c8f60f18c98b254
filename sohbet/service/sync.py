"""`sync`: everything a client missed while it was away, then where it now stands.

Layer: service. Imports asyncio, the chat domain and the store interface.

Nothing ever ages out: the client names its last seen seq per conversation and gets every
message after it, in seq order, within a per-conversation and a per-call budget; `complete:
false` sends it back for the rest. Conversations it did not name get their newest few, from the
same budget, so a user in thousands of conversations cannot make one call do unbounded work.

Seqs have no gaps, so what each conversation will replay is known from its last seq before any
message is read: the whole plan is made first, then read in a few statements of at most
`_READ_CHUNK` messages. A replay waits for the client to read (`Socket.drained`), so a long one
keeps pace with it instead of piling up in memory and ending in a 4008, and it stops as soon as
the connection closes.
"""

from __future__ import annotations

from typing import Final

from sohbet.chat import wire
from sohbet.chat.ids import ConversationId
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.service.context import Context, RequestHandler
from sohbet.service.session import Session
from sohbet.store import Span

__all__ = ["Sync"]

_MESSAGE: Final = EventType.MESSAGE  # looked up once: it is sent per replayed message
_READ_CHUNK: Final = 1000  # messages read from storage at once: bounds the memory of one replay


class Sync:
    """Catching up after a reconnect."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[RequestType, RequestHandler]:
        """The requests this family answers."""
        return {RequestType.SYNC: self.ctx.spawn(self._sync)}

    async def _sync(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        cfg = ctx.config
        request = wire.SyncRequest.parse(envelope.payload)
        ctx.spend(session, RequestType.SYNC)
        mine = await ctx.conversations_of(session.user)
        known = await ctx.store.last_seqs(list(mine))
        highest = dict(known)
        forbidden = [cid for cid in request.cursors if cid not in known]
        budget = cfg.sync_per_call
        complete = True
        spans: list[Span] = []
        for cid, after in request.cursors.items():
            missed = known.get(cid, after) - after
            if missed <= 0:
                continue  # not the user's, or nothing after this cursor
            count = min(missed, cfg.sync_per_conversation, budget)
            if count < missed:
                # Cut short: report what will be delivered, so the next call's cursor resumes there.
                complete = False
                highest[cid] = after + count
            if count:
                spans.append((cid, after, after + count))
                budget -= count
        unnamed = sorted((cid for cid in known if cid not in request.cursors), key=known.__getitem__, reverse=True)
        for cid in unnamed:  # the busiest first, while the budget lasts; never makes complete false
            count = min(known[cid], cfg.sync_unnamed, budget)
            if count <= 0:
                break
            spans.append((cid, known[cid] - count, known[cid]))
            budget -= count
        if not await self._replay(session, spans):
            return  # the connection closed: nobody to tell
        payload = {
            "conversations": {str(cid): seq for cid, seq in highest.items()},
            "forbidden": forbidden,
            "complete": complete,
        }
        ctx.reply(session, EventType.SYNC_DONE, payload, envelope.ref)

    async def _replay(self, session: Session, spans: list[Span]) -> bool:
        """Send the messages of *spans*, a chunk at a time; False if the connection closed."""
        store = self.ctx.store
        for chunk in _chunks(spans):
            if session.closed:
                return False
            for message in await store.messages_between(chunk):
                if session.closed:
                    return False
                session.socket.send_text(wire.encode(_MESSAGE, {"message": wire.message_object(message)}))
                await session.socket.drained()  # a long replay waits for the client to read
        return not session.closed


def _chunks(spans: list[Span]) -> list[list[Span]]:
    """Split *spans* into groups of at most `_READ_CHUNK` messages, splitting a long span too."""
    chunks: list[list[Span]] = []
    chunk: list[Span] = []
    room = _READ_CHUNK
    for cid, after, up_to in spans:
        start = after
        while start < up_to:
            take = min(up_to - start, room)
            chunk.append((ConversationId(cid), start, start + take))
            start += take
            room -= take
            if not room:
                chunks.append(chunk)
                chunk, room = [], _READ_CHUNK
    if chunk:
        chunks.append(chunk)
    return chunks

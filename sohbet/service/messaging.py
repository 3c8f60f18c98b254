"""Messages in a conversation: `chat:send`, `chat:typing`, `chat:read`, `chat:history`.

Layer: service. Imports asyncio, the chat domain and the store interface.

A `chat:send` never waits for the database on its way in when the conversation's members are
cached: it is validated, checked against membership and the user's rate bucket, and handed to
the writer, all before the callback returns. A send to a conversation the cache knows is not the
user's is refused at once, without loading anything. Typing is forwarded from the cache too; reads and
history need the database and run as tasks.
"""

from __future__ import annotations

from time import perf_counter
from typing import Final

from sohbet.broker import Kind
from sohbet.chat import wire
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import make_new_message
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.errors import ErrorCode, MessageRejected, StoreError
from sohbet.service.context import Context, RequestHandler, not_a_member
from sohbet.service.session import Session
from sohbet.service.writer import Writer

__all__ = ["Messaging"]

# Looked up once: an enum member's attribute lookup costs ~0.1 µs, per event.
_TYPING: Final = EventType.TYPING
_READ: Final = EventType.READ
_SEND: Final = RequestType.SEND.value
_TYPING_REQUEST: Final = RequestType.TYPING.value


class Messaging:
    """Sending, typing, read receipts and history."""

    def __init__(self, ctx: Context, writer: Writer) -> None:
        self.ctx = ctx
        self.writer = writer

    def handlers(self) -> dict[RequestType, RequestHandler]:
        """The requests this family answers."""
        spawn = self.ctx.spawn
        return {
            RequestType.SEND: self._send,
            RequestType.TYPING: self._typing,
            RequestType.READ: spawn(self._read),
            RequestType.HISTORY: spawn(self._history),
        }

    # -- chat:send ----------------------------------------------------------------------------

    def _send(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        request = wire.SendRequest.parse(envelope.payload, ctx.config.max_content_chars)
        members = ctx.hub.members(request.conversation_id)
        if members is not None and session.user in members:
            self._enqueue(session, envelope.ref, request, members)
            return
        if ctx.hub.is_member(session.user, request.conversation_id) is False:
            raise not_a_member(request.conversation_id)  # known from the user's own set: load nothing
        ctx.start_request(session, self._send_after_loading(session, envelope, request))

    async def _send_after_loading(self, session: Session, envelope: Envelope, request: wire.SendRequest) -> None:
        ctx = self.ctx
        with ctx.answering_errors(session, envelope):
            await ctx.require_member(session, request.conversation_id)
            self._enqueue(session, envelope.ref, request, await ctx.member_set(request.conversation_id))

    def _enqueue(self, session: Session, ref: str | None, request: wire.SendRequest, members: set[UserId]) -> None:
        if session.user not in members:
            raise not_a_member(request.conversation_id)
        ctx = self.ctx
        now = ctx.clock.now()
        wait_ms = session.limited and ctx.limiter.take((session.user, _SEND), now, ctx.rates[_SEND])
        if wait_ms:
            # A retry of a stored message is answered even when the bucket is empty: replays
            # spend no token. Finding out needs the database, so only this path pays for it.
            ctx.start_request(session, self._limited_or_replay(session, ref, request, wait_ms))
            return
        message = make_new_message((request.conversation_id, session.user, request.client_id, request.content))
        if not self.writer.submit((session, ref, message, perf_counter())):
            ctx.refund(session, _SEND)
            raise MessageRejected(ErrorCode.UNAVAILABLE, "too many messages waiting to be stored; retry")

    async def _limited_or_replay(
        self, session: Session, ref: str | None, request: wire.SendRequest, wait_ms: int
    ) -> None:
        ctx = self.ctx
        try:
            earlier = await ctx.store.find_message(session.user, request.client_id)
        except StoreError:
            earlier = None
        if earlier is not None:
            # In case the replay must be delivered; kept, as in `Writer._answer`, should other
            # loads drop the set from the cache before this resumes.
            loaded = await ctx.member_set(earlier.conversation_id)
            self.writer.replayed(session, ref, earlier, loaded=loaded)
            return
        rate = ctx.config.send_rate_per_s
        ctx.error(session, ErrorCode.RATE_LIMITED, f"more than {rate:g} messages per second", ref, wait_ms)

    # -- typing, reads, history ---------------------------------------------------------------

    def _typing(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        conversation = wire.conversation_of(envelope.payload)
        members = ctx.hub.members(conversation)
        if members is not None and session.user in members:
            self._forward_typing(session, conversation, members)
            return
        if ctx.hub.is_member(session.user, conversation) is False:  # as in `_send`
            raise not_a_member(conversation)
        ctx.spawn(self._typing_after_loading)(session, envelope)

    async def _typing_after_loading(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        conversation = wire.conversation_of(envelope.payload)
        await ctx.require_member(session, conversation)
        self._forward_typing(session, conversation, await ctx.member_set(conversation))

    def _forward_typing(self, session: Session, conversation: ConversationId, members: set[UserId]) -> None:
        if session.user not in members:
            raise not_a_member(conversation)
        ctx = self.ctx
        cfg = ctx.config
        now = ctx.clock.now()
        if ctx.limiter.take((session.user, _TYPING_REQUEST), now, ctx.rates[_TYPING_REQUEST]):
            return  # over its limit, typing is dropped silently: it is only a hint
        if ctx.hub.allow_typing(session.user, conversation, now, cfg.typing_interval_s):
            notice = {"conversation_id": conversation, "user_id": session.user, "expires_in_ms": cfg.typing_expires_ms}
            others = (u for u in members if u != session.user)  # not the typist's own devices
            data = wire.encode(_TYPING, notice)
            ctx.to_members(others, data)
            ctx.cluster.send({"k": Kind.TYPING, "c": conversation, "u": session.user}, data)

    async def _read(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        request = wire.ReadRequest.parse(envelope.payload)
        await ctx.require_member(session, request.conversation_id)
        ctx.spend(session, RequestType.READ)
        moved = await ctx.store.mark_read(request.conversation_id, session.user, request.seq)
        if moved is not None:
            receipt = {"conversation_id": request.conversation_id, "user_id": session.user, "seq": moved}
            members = await ctx.member_set(request.conversation_id)
            data = wire.encode(_READ, receipt)
            ctx.to_members(members, data, skip=session.socket)
            ctx.cluster.send({"k": Kind.READ, "c": request.conversation_id}, data)

    async def _history(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        request = wire.HistoryRequest.parse(envelope.payload)
        await ctx.require_member(session, request.conversation_id)
        ctx.spend(session, RequestType.HISTORY)
        found, has_more = await ctx.store.history(request.conversation_id, request.before_seq, request.limit)
        payload = {
            "conversation_id": request.conversation_id,
            "messages": [wire.message_object(x) for x in found],
            "has_more": has_more,
        }
        ctx.reply(session, EventType.HISTORY, payload, envelope.ref)

"""Conversations: `conversation:create`, `conversation:list`, `conversation:members`,
`conversation:leave`.

Layer: service. Imports asyncio, the chat domain and the store interface.

Membership changes go to the hub's cache as well as to storage, the cache first on a leave: from
that moment the user's new sends are refused here, and the store refuses, at commit, any that
were already queued.
"""

from __future__ import annotations

from sohbet.chat import wire
from sohbet.chat.model import DIRECT_MEMBERS, ConversationKind
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.errors import ErrorCode, MessageRejected, StoreError
from sohbet.service.context import Context, RequestHandler
from sohbet.service.session import Session

__all__ = ["Conversations"]


class Conversations:
    """Creating, listing, paging the members of and leaving conversations."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def handlers(self) -> dict[RequestType, RequestHandler]:
        """The requests this family answers."""
        spawn = self.ctx.spawn
        return {
            RequestType.CREATE: spawn(self._create),
            RequestType.LIST: spawn(self._list),
            RequestType.MEMBERS: spawn(self._members_page),
            RequestType.LEAVE: spawn(self._leave),
        }

    async def _create(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        cfg = ctx.config
        request = wire.CreateRequest.parse(envelope.payload, cfg.max_group_members)
        members = list(dict.fromkeys([session.user, *request.members]))  # the creator is always in
        if len(members) < DIRECT_MEMBERS:
            raise MessageRejected(ErrorCode.BAD_REQUEST, "a conversation needs at least one other member")
        if len(members) > cfg.max_group_members:
            raise MessageRejected(ErrorCode.TOO_LARGE, f"a group holds at most {cfg.max_group_members} members")
        kind = ConversationKind.DIRECT if len(members) == DIRECT_MEMBERS else ConversationKind.GROUP
        conversation, created = await ctx.store.create_conversation(members, request.title, kind, ctx.wall_ms())
        if created or kind == ConversationKind.DIRECT:  # asked for again, a direct one may have had a member rejoin
            ctx.hub.set_members(conversation.id, members)
        obj = {"conversation": wire.conversation_object(conversation)}
        ctx.reply(session, EventType.CREATED, obj, envelope.ref)
        if created:
            ctx.to_members(members, wire.encode(EventType.CREATED, obj), skip=session.socket)

    async def _list(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        request = wire.ListRequest.parse(envelope.payload)
        page = await ctx.store.list_conversations(session.user, request.cursor, request.limit)
        payload = {
            "conversations": [wire.conversation_object(c, with_unread=True) for c in page.conversations],
            "next_cursor": page.next_cursor,
        }
        ctx.reply(session, EventType.LIST, payload, envelope.ref)

    async def _members_page(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        request = wire.MembersRequest.parse(envelope.payload)
        await ctx.require_member(session, request.conversation_id)
        found, next_cursor = await ctx.store.members_page(request.conversation_id, request.cursor, request.limit)
        payload = {"conversation_id": request.conversation_id, "members": found, "next_cursor": next_cursor}
        ctx.reply(session, EventType.MEMBERS, payload, envelope.ref)

    async def _leave(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        conversation = wire.conversation_of(envelope.payload)
        members = set(await ctx.require_member(session, conversation))
        # The cache first: from here on, new sends from this user are refused (the store also
        # refuses, at commit, messages from anyone who is no longer a member).
        ctx.hub.remove_member(conversation, session.user)
        try:
            await ctx.store.remove_member(conversation, session.user)
        except StoreError:
            ctx.hub.add_member(conversation, session.user)
            raise
        # The remaining members and the user's other connections learn of it.
        notice = {"conversation_id": conversation, "user_id": session.user}
        ctx.to_members(members, wire.encode(EventType.MEMBER_REMOVED, notice), skip=session.socket)
        ctx.reply(session, EventType.LEFT, {"conversation_id": conversation}, envelope.ref)

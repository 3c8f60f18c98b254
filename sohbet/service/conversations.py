"""Conversations: `conversation:create`, `conversation:list`, `conversation:members`,
`conversation:leave`.

Layer: service. Imports asyncio, the chat domain and the store interface.

Membership changes go to the hub's cache as well as to storage, the cache first on a leave: from
that moment the user's new sends are refused here, and the store refuses, at commit, any that
were already queued.
"""

from __future__ import annotations

from typing import Final

from sohbet.chat import wire
from sohbet.chat.model import DIRECT_MEMBERS, ConversationKind
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.errors import ErrorCode, MessageRejected, StoreError
from sohbet.service.context import Context, RequestHandler, not_a_member
from sohbet.service.session import Session

__all__ = ["Conversations"]

#: The bucket of groups created per hour, beside the per-request `conversation:create` bucket.
_GROUPS: Final = "groups"


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
        limit = cfg.max_conversations_per_user
        if limit and len(await ctx.conversations_of(session.user)) >= limit:
            raise MessageRejected(ErrorCode.TOO_LARGE, f"you are in {limit} conversations, the most allowed")
        kind = ConversationKind.DIRECT if len(members) == DIRECT_MEMBERS else ConversationKind.GROUP
        ctx.spend(session, RequestType.CREATE)
        if kind == ConversationKind.GROUP:
            self._spend_group(session)
        try:
            conversation, joined = await ctx.store.create_conversation(members, request.title, kind, ctx.wall_ms())
        except StoreError:
            ctx.refund(session, RequestType.CREATE)
            if kind == ConversationKind.GROUP:
                ctx.limiter.refund((session.user, _GROUPS), cfg.group_rate)
            raise
        if len(joined) == len(members):
            ctx.hub.set_members(conversation.id, members)  # new (or both had left): the whole set
        else:
            for user in joined:  # a direct one asked for again, with a member who had left back in
                ctx.hub.add_member(conversation.id, user)
        obj = {"conversation": wire.conversation_object(conversation)}
        ctx.reply(session, EventType.CREATED, obj, envelope.ref)
        if joined:
            # Everyone who became a member learns of it on every connection (but the one that asked).
            ctx.to_members(joined, wire.encode(EventType.CREATED, obj), skip=session.socket)

    def _spend_group(self, session: Session) -> None:
        ctx = self.ctx
        rate = ctx.config.group_rate
        wait_ms = ctx.limiter.take((session.user, _GROUPS), ctx.clock.now(), rate)
        if wait_ms:
            ctx.refund(session, RequestType.CREATE)
            raise MessageRejected(
                ErrorCode.RATE_LIMITED, f"more than {rate.burst} groups created per hour", retry_after_ms=wait_ms
            )

    async def _list(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        request = wire.ListRequest.parse(envelope.payload)
        ctx.spend(session, RequestType.LIST)
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
        ctx.spend(session, RequestType.MEMBERS)
        found, next_cursor = await ctx.store.members_page(request.conversation_id, request.cursor, request.limit)
        payload = {"conversation_id": request.conversation_id, "members": found, "next_cursor": next_cursor}
        ctx.reply(session, EventType.MEMBERS, payload, envelope.ref)

    async def _leave(self, session: Session, envelope: Envelope) -> None:
        ctx = self.ctx
        conversation = wire.conversation_of(envelope.payload)
        await ctx.require_member(session, conversation)
        ctx.spend(session, RequestType.LEAVE)
        members = set(await ctx.member_set(conversation))
        if session.user not in members:
            raise not_a_member(conversation)  # another connection of the user left while it loaded
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

"""Conversations: `conversation:create`, `conversation:list`, `conversation:members`,
`conversation:leave`.

Layer: service. Imports asyncio, the chat domain and the store interface.

Membership changes go to the hub's cache as well as to storage, the cache first on a leave: from
that moment the user's new sends are refused here, and the store refuses, at commit, any that
were already queued. The cores of creating, adding and removing (`create`, `add`, `remove`) are
shared with the application's backend (`service/backend.py`), which acts for any user.
"""

from __future__ import annotations

from typing import Final

from sohbet.broker import Kind
from sohbet.chat import wire
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import DIRECT_MEMBERS, Conversation, ConversationKind
from sohbet.chat.wire import Envelope, EventType, RequestType
from sohbet.errors import ErrorCode, MessageRejected, StoreError
from sohbet.service.context import Context, RequestHandler, not_a_member
from sohbet.service.session import Session, Socket

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
        members = self.checked_members([session.user, *request.members])  # the creator is always in
        limit = cfg.max_conversations_per_user
        if limit and len(await ctx.conversations_of(session.user)) >= limit:
            raise MessageRejected(ErrorCode.TOO_LARGE, f"you are in {limit} conversations, the most allowed")
        is_group = len(members) > DIRECT_MEMBERS
        ctx.spend(session, RequestType.CREATE)
        if is_group:
            self._spend_group(session)
        try:
            conversation, joined = await self.create(members, request.title)
        except StoreError:
            ctx.refund(session, RequestType.CREATE)
            if is_group:
                ctx.limiter.refund((session.user, _GROUPS), cfg.group_rate)
            raise
        obj = {"conversation": wire.conversation_object(conversation)}
        session.answer(EventType.CREATED, obj, envelope.ref)
        # Everyone who became a member learns of it on every connection (but the one that asked).
        self.announce_created(conversation, joined, skip=session.socket)

    def announce_created(self, conversation: Conversation, joined: list[UserId], *, skip: Socket | None = None) -> None:
        """Tell every connection of every member who joined, here and on the other instances."""
        if joined:
            data = wire.encode(EventType.CREATED, {"conversation": wire.conversation_object(conversation)})
            self.ctx.to_members(joined, data, skip=skip)
            header = {
                "k": Kind.CREATED,
                "c": conversation.id,
                "m": joined,
                "s": conversation.last_seq,
                "new": len(joined) == conversation.member_count,  # `m` is every member
            }
            self.ctx.cluster.send(header, data)
            self.ctx.cluster.reconcile_soon()

    def checked_members(self, users: list[UserId]) -> list[UserId]:
        """The members of a new conversation: *users* without duplicates, at least two, at most
        the group limit.

        Raises:
            MessageRejected: `bad_request` for fewer than two, `too_large` above the limit.
        """
        members = list(dict.fromkeys(users))
        if len(members) < DIRECT_MEMBERS:
            raise MessageRejected(ErrorCode.BAD_REQUEST, "a conversation needs at least two distinct members")
        limit = self.ctx.config.max_group_members
        if len(members) > limit:
            raise MessageRejected(ErrorCode.TOO_LARGE, f"a group holds at most {limit} members")
        return members

    async def create(self, members: list[UserId], title: str | None) -> tuple[Conversation, list[UserId]]:
        """Create a conversation of *members* (see `checked_members`): two make a direct one,
        unique per pair, which is returned if it exists; more make a group.

        Returns:
            The conversation, and who became a member by this call (see
            `MessageStore.create_conversation`); the hub's caches already know them.
        """
        ctx = self.ctx
        kind = ConversationKind.DIRECT if len(members) == DIRECT_MEMBERS else ConversationKind.GROUP
        conversation, joined = await ctx.store.create_conversation(members, title, kind, ctx.wall_ms())
        if len(joined) == len(members):
            ctx.hub.set_members(conversation.id, members)  # new (or both had left): the whole set
        else:
            for user in joined:  # a direct one asked for again, with a member who had left back in
                ctx.hub.add_member(conversation.id, user)
        return conversation, joined

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
        if not await self.remove(conversation, session.user, skip=session.socket):
            raise not_a_member(conversation)  # another connection of the user left while it loaded
        session.answer(EventType.LEFT, {"conversation_id": conversation}, envelope.ref)

    async def remove(self, conversation: ConversationId, user: UserId, *, skip: Socket | None = None) -> bool:
        """Remove *user* from the conversation; the remaining members and every connection of
        *user* but *skip* get `conversation:member_removed`. False if *user* was not a member.

        The user stops receiving the conversation at once: the cache changes before storage,
        and the store refuses, at commit, sends of the user that were already queued.
        """
        ctx = self.ctx
        members = set(await ctx.member_set(conversation))
        if user not in members:
            return False
        ctx.hub.remove_member(conversation, user)
        # Until it commits, storage still lists the user: a load of the members meanwhile (after
        # an eviction) must not put them back in the cache.
        ctx.hub.hold_removal(conversation, user)
        try:
            await ctx.store.remove_member(conversation, user)
        except StoreError:
            ctx.hub.add_member(conversation, user)
            raise
        finally:
            ctx.hub.release_removal(conversation, user)
        notice = {"conversation_id": conversation, "user_id": user}
        data = wire.encode(EventType.MEMBER_REMOVED, notice)
        ctx.to_members(members, data, skip=skip)
        ctx.cluster.send({"k": Kind.MEMBER_REMOVED, "c": conversation, "u": user}, data)
        ctx.cluster.reconcile_soon()
        return True

    async def add(self, conversation: ConversationId, user: UserId) -> Conversation:
        """Add *user* to a group; every member, the new one included, gets
        `conversation:member_added`. Adding a member again changes nothing and tells nobody.

        Raises:
            MessageRejected: `not_found` (no such conversation), `bad_request` (a direct one: it
                has exactly two members), `too_large` (the group is full).
        """
        ctx = self.ctx
        found = await self.existing(conversation)
        if found.kind == ConversationKind.DIRECT:
            raise MessageRejected(ErrorCode.BAD_REQUEST, f"conversation {conversation} is direct: it has two members")
        if user in await ctx.member_set(conversation):
            return found  # already in: nothing changes, even in a full group
        limit = ctx.config.max_group_members
        if found.member_count >= limit:
            raise MessageRejected(ErrorCode.TOO_LARGE, f"a group holds at most {limit} members")
        if not await ctx.store.add_member(conversation, user, ctx.wall_ms()):
            return found
        ctx.hub.add_member(conversation, user)
        notice = {"conversation_id": conversation, "user_id": user}
        data = wire.encode(EventType.MEMBER_ADDED, notice)
        # Told before anything that could fail after the commit; `s` is where the conversation
        # stood just before the join (read before it): the others deliver what follows.
        ctx.cluster.send({"k": Kind.MEMBER_ADDED, "c": conversation, "u": user, "s": found.last_seq}, data)
        ctx.cluster.reconcile_soon()
        try:
            members = await ctx.member_set(conversation)
        except StoreError:
            members = ctx.hub.members(conversation) or {user}  # the change is made: tell whom we know
        ctx.to_members(members, data)
        return await self.existing(conversation)

    async def existing(self, conversation: ConversationId) -> Conversation:
        """The conversation, for the application's backend, which may know which exist.

        Raises:
            MessageRejected: `not_found`.
        """
        found = await self.ctx.store.conversation(conversation)
        if found is None:
            raise MessageRejected(ErrorCode.NOT_FOUND, f"conversation {conversation} does not exist")
        return found

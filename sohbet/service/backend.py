"""What the application's backend may do with its API key (docs/protocol.md, "HTTP API"): act
for any user, and the operations only a server may ask for — membership changes, application
events, presence, disconnecting a user.

Layer: service. Imports asyncio, the chat domain and the store interface.

Everything a user may also do goes through the same code as that user's own request: a send is
a `chat:send` handled for the sender (`ChatService.request`, with no rate limit: the backend is
trusted, and its system messages must not eat the user's own budget), and a new conversation,
an added or a removed member go through the cores the WebSocket requests use
(`Conversations.create`, `add`, `remove`). The backend may know which conversations exist, so a
missing one is `not_found` here, where a user is told `forbidden`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final, TypeVar

from sohbet.broker import Kind
from sohbet.chat import wire
from sohbet.chat.ids import MAX_USER_ID_CHARS, ConversationId, UserId, is_user_id
from sohbet.chat.model import Conversation, StoredMessage
from sohbet.chat.wire import RequestType
from sohbet.errors import ErrorCode, MessageRejected
from sohbet.service.dispatch import ChatService
from sohbet.service.session import Call
from sohbet.store import members_page_of
from sohbet.ws.codes import CloseCode

__all__ = ["MAX_PUBLISH_USERS", "Backend"]

T = TypeVar("T")

#: Users one `POST /api/publish` may name: the size of the largest group.
MAX_PUBLISH_USERS: Final = 10_000


class Backend:
    """The application backend's operations on one server process."""

    def __init__(self, chat: ChatService, max_event_bytes: int) -> None:
        """Args:
        chat: the service whose connections and rules these operations use.
        max_event_bytes: the largest application event, encoded: what a connection may be sent
            in one message without being closed as a slow consumer.
        """
        self.chat = chat
        self.ctx = chat.ctx
        self.max_event_bytes = max_event_bytes

    # -- conversations ------------------------------------------------------------------------

    async def create(self, body: dict[str, Any]) -> Conversation:
        """Create a conversation of the members named (no creator is added); every connection
        of every member who joined gets `conversation:created`."""
        conversations = self.chat.conversations
        request = wire.CreateRequest.parse(body, self.ctx.config.max_group_members)
        members = conversations.checked_members(request.members)
        conversation, joined = await self._whole(conversations.create(members, request.title))
        conversations.announce_created(conversation, joined)
        return conversation

    async def add_member(self, conversation: ConversationId, body: dict[str, Any]) -> Conversation:
        """Add the user the body names to a group (see `Conversations.add`)."""
        request = wire.MemberRequest.parse(body)
        return await self._whole(self.chat.conversations.add(conversation, request.user_id))

    async def remove_member(self, conversation: ConversationId, user: UserId) -> None:
        """Remove a member; their open connections stop receiving the conversation at once.

        Raises:
            MessageRejected: `not_found`: no such conversation, or the user is not in it.
        """
        await self.chat.conversations.existing(conversation)
        if not await self._whole(self.chat.conversations.remove(conversation, user)):
            raise MessageRejected(ErrorCode.NOT_FOUND, f"{user!r} is not a member of conversation {conversation}")

    async def _whole(self, change: Coroutine[Any, Any, T]) -> T:
        """Run a change of membership to its end, whatever happens to the request that asked.

        The hub's cache changes before storage does (a removal must stop deliveries at once),
        so a change given up halfway (the HTTP request timed out, or its client went) would
        leave the cache and storage apart. As a task of its own it finishes, or fails whole.
        """
        done: T = await asyncio.shield(self.ctx.start(change))
        return done

    # -- messages -----------------------------------------------------------------------------

    async def send(self, conversation: ConversationId, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Send as the user `sender_id` names, exactly as their `chat:send`: acked once stored,
        delivered to every connection of every member (the sender's too), and a repeated
        `(sender_id, client_id)` answered with the original.

        Returns:
            The message's wire form, and whether this call stored it (False: a repeat).

        Raises:
            MessageRejected: `bad_request`, `too_large`, `not_found` (no such conversation),
                `forbidden` (the sender is not a member), `unavailable`.
        """
        sender = body.get("sender_id")
        if not is_user_id(sender):
            raise MessageRejected(
                ErrorCode.BAD_REQUEST, f"sender_id must be a user id: a string of 1-{MAX_USER_ID_CHARS} characters"
            )
        call = Call(UserId(sender), limited=False)
        payload = {**body, "conversation_id": conversation}
        try:
            reply = await self.chat.request(call, RequestType.SEND, payload)
        except MessageRejected as exc:
            if exc.code != ErrorCode.FORBIDDEN:
                raise
            await self.chat.conversations.existing(conversation)
            raise MessageRejected(
                ErrorCode.FORBIDDEN, f"{sender!r} is not a member of conversation {conversation}"
            ) from None
        message: dict[str, Any] = reply["message"]
        return message, call.created

    async def history(self, conversation: ConversationId, query: dict[str, Any]) -> tuple[list[StoredMessage], bool]:
        """A page of any conversation's history (the query of `chat:history`).

        Raises:
            MessageRejected: `bad_request`, `not_found`.
        """
        request = wire.HistoryRequest.parse({**query, "conversation_id": conversation})
        if conversation not in await self.ctx.store.last_seqs([conversation]):
            raise MessageRejected(ErrorCode.NOT_FOUND, f"conversation {conversation} does not exist")
        return await self.ctx.store.history(conversation, request.before_seq, request.limit)

    # -- application events -------------------------------------------------------------------

    def publish(self, body: dict[str, Any]) -> int:
        """Push an `app:*` event to every open connection of the users named; return how many got it."""
        event = wire.AppEvent.parse(body, MAX_PUBLISH_USERS, to_users=True)
        data = self._encoded(event)
        self._reaching_every_instance()
        self.ctx.cluster.send({"k": Kind.PUBLISH, "us": event.user_ids}, data)
        return self.ctx.to_members(event.user_ids, data)

    def broadcast(self, body: dict[str, Any]) -> int:
        """Push an `app:*` event to every open connection; return how many got it."""
        event = wire.AppEvent.parse(body, MAX_PUBLISH_USERS, to_users=False)
        data = self._encoded(event)
        self._reaching_every_instance()
        self.ctx.cluster.send({"k": Kind.BROADCAST}, data)
        sent = self.ctx.outbox.deliver(self.ctx.hub.all_connections(), data)
        self.ctx.stats.deliveries += sent
        return sent

    def _reaching_every_instance(self) -> None:
        """Refuse, before doing anything, what must reach every instance while the link to
        them is down: an event or a ban that only this instance's connections got would be
        half done, and the caller would not know (retrying after the answer is safe).

        Raises:
            MessageRejected: `unavailable`.
        """
        if not self.ctx.cluster.reachable:
            raise MessageRejected(
                ErrorCode.UNAVAILABLE, "redis is unreachable: the other instances cannot be told; retry"
            )

    def _encoded(self, event: wire.AppEvent) -> bytes:
        data = wire.encode_app(event.type, event.payload)
        if len(data) > self.max_event_bytes:
            # One message this large would leave more unread bytes than a connection may hold.
            raise MessageRejected(
                ErrorCode.TOO_LARGE, f"event of {len(data)} bytes exceeds the limit of {self.max_event_bytes}"
            )
        return data

    # -- users --------------------------------------------------------------------------------

    def presence(self, user: UserId) -> dict[str, Any]:
        """Whether *user* is online (in the grace period counts), and their open connections on
        every instance."""
        hub = self.ctx.hub
        connections = len(hub.connections(user)) + self.ctx.cluster.remote_connections(user)
        return {"user_id": user, "online": hub.is_online(user), "connections": connections}

    def online(self, query: dict[str, Any]) -> dict[str, Any]:
        """A page of the users online, in id order; `next_cursor` continues after the last."""
        request = wire.OnlineQuery.parse(query)
        users, next_cursor = members_page_of(
            self.ctx.hub.online_users(request.cursor, request.limit + 1), request.limit
        )
        return {"online": users, "next_cursor": next_cursor}

    def disconnect(self, user: UserId, body: dict[str, Any]) -> int:
        """Close every open connection of *user* (default code 4501: do not reconnect); return
        how many were closed."""
        request = wire.DisconnectRequest.parse(body, CloseCode.DISCONNECTED_BY_APP)
        self._reaching_every_instance()
        self.ctx.cluster.send({"k": Kind.DISCONNECT, "u": user, "code": request.code, "reason": request.reason})
        return self.chat.close_user(user, request.code, request.reason)

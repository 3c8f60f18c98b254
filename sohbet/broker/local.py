"""The broker of a single process: there is no other instance to tell.

Layer: broker. Every method is a no-op; the service delivers everything to its own connections
itself, and counts connections itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from sohbet.broker import Header, Listener
from sohbet.chat.ids import ConversationId, UserId

__all__ = ["LocalBroker"]


class LocalBroker:
    """One process: nobody else to tell. The service delivers everything itself."""

    def __init__(self, instance_id: str) -> None:
        self._instance_id = instance_id

    @property
    def instance_id(self) -> str:  # see Broker
        return self._instance_id

    @property
    def clustered(self) -> bool:  # see Broker
        return False

    @property
    def up(self) -> bool:  # see Broker
        return True

    async def start(self, listener: Listener) -> None:  # see Broker
        pass

    async def stop(self) -> None:  # see Broker
        pass

    def send(self, header: Header, data: bytes) -> None:  # see Broker
        pass

    async def follow(self, conversations: Iterable[ConversationId]) -> None:  # see Broker
        pass

    def unfollow(self, conversations: Iterable[ConversationId]) -> None:  # see Broker
        pass

    async def refollow(self, conversations: Iterable[ConversationId]) -> None:  # see Broker
        pass

    async def admit(
        self, user: UserId, limit: int, conversations: Iterable[ConversationId]
    ) -> int | None:  # see Broker
        return None

    def release(self, user: UserId, conversations: Iterable[ConversationId]) -> None:  # see Broker
        pass

    def stats(self) -> dict[str, int]:  # see Broker
        return {}

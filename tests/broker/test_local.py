"""The broker of a single process: nothing to tell, nothing to count, always up."""

from __future__ import annotations

import asyncio

from sohbet.broker.local import LocalBroker
from sohbet.chat.ids import ConversationId, UserId


def test_a_single_process_broker_tells_nobody_and_leaves_counting_to_the_service() -> None:
    async def main() -> None:
        broker = LocalBroker("solo")
        assert broker.instance_id == "solo" and not broker.clustered and broker.up
        await broker.start(None)  # type: ignore[arg-type]  # it never calls its listener
        broker.send({"k": "m", "c": 1, "s": 1}, b"{}")
        await broker.follow([ConversationId(1)])
        broker.unfollow([ConversationId(1)])
        assert await broker.admit(UserId("a"), 10, []) is None  # the service counts by itself
        broker.release(UserId("a"), [])
        assert broker.stats() == {}
        await broker.stop()

    asyncio.run(main())

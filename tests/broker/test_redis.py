"""The Redis broker alone, against a private `redis-server`: two instances' brokers in one
process, a listener that records what it is told."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from sohbet.broker import REFUSED, Header, Presence
from sohbet.broker.redis import RedisBroker
from sohbet.chat.ids import ConversationId, UserId

from ..clusterkit import private_redis


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Header, bytes]] = []
        self.presences: list[Presence] = []
        self.links: list[bool] = []
        self.arrived = asyncio.Event()

    def event(self, header: Header, data: bytes) -> None:
        self.events.append((header, data))
        self.arrived.set()

    def presence(self, change: Presence) -> None:
        self.presences.append(change)

    def snapshot(self, counts: dict[str, dict[UserId, int]], newer: set[tuple[str, UserId]]) -> None:
        pass

    def instance_gone(self, instance: str) -> None:
        pass

    def link_changed(self, up: bool) -> None:
        self.links.append(up)


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def test_events_cross_bad_ones_are_counted_and_a_silent_redis_makes_admit_fall_back(tmp_path: Path) -> None:
    with private_redis(tmp_path) as redis:

        async def main() -> None:
            a, b = (
                RedisBroker(redis.url, "a", prefix="p", timeout_s=0.5),
                RedisBroker(redis.url, "b", prefix="p", timeout_s=0.5),
            )
            heard_a, heard_b = Recorder(), Recorder()
            await a.start(heard_a)
            await b.start(heard_b)
            try:
                assert a.instance_id == "a" and a.up and b.up
                await b.follow([ConversationId(7)])
                a.send({"k": "m", "c": 7, "s": 1}, b"payload")
                await until(lambda: heard_b.events)
                assert heard_b.events[0] == ({"k": "m", "c": 7, "s": 1, "i": "a"}, b"payload")
                await b.refollow([ConversationId(7), ConversationId(8)])  # again: harmless; 8 is not followed
                a.send({"k": "m", "c": 7, "s": 2}, b"again")
                await until(lambda: len(heard_b.events) == 2)
                assert heard_b.events[1][1] == b"again"
                del heard_b.events[1]
                # Garbage published into the channel everyone follows: counted, the link lives on.
                raw = aioredis.Redis.from_url(redis.url)
                await raw.publish("p:all", b"not json\\n")
                await raw.aclose()
                a.send({"k": "b"}, b"after")
                await until(lambda: len(heard_b.events) == 2)
                assert b.stats()["bad"] == 1 and b.up
                # The limit over both instances, counted in Redis.
                assert await a.admit(UserId("u"), 2, []) == 1
                assert await b.admit(UserId("u"), 2, []) == 2
                assert await b.admit(UserId("u"), 2, []) == REFUSED
                # Redis stops answering: an admission falls back on this instance's own count.
                redis.pause()
                try:
                    assert await a.admit(UserId("v"), 2, []) is None
                finally:
                    redis.resume()
                await until(lambda: a.up, timeout=10)
            finally:
                await a.stop()
                await b.stop()

        asyncio.run(main())

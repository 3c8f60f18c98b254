"""What conversation channels cost Redis: an instance following 100,000 one-to-one
conversations, against one following 1,000, and a message's cost as it is copied to several
instances (a group whose members are spread over them).

    python -P benchmarks/cluster_channels.py [--runs 3] [--conversations 100000]

Starts a private `redis-server` (no persistence) on a free loopback port and drives it through
sohbet's own `RedisBroker`. Reports, per run: the time to follow N conversations (SUBSCRIBE in
chunks, each confirmed), Redis's memory per followed conversation, and Redis's CPU per event
delivered, with 1,000 and with N channels followed (the same run), and with one event reaching
1, 2 and 3 instances. Bounded: a few seconds per run; everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from sohbet.broker import Header, Presence
from sohbet.broker.redis import RedisBroker
from sohbet.chat.ids import ConversationId, UserId

EVENTS = 50_000


class Counter:
    """A listener that counts what arrives."""

    def __init__(self) -> None:
        self.events = 0
        self.done = asyncio.Event()
        self.want = 0

    def event(self, header: Header, data: bytes) -> None:
        self.events += 1
        if self.events >= self.want:
            self.done.set()

    def presence(self, change: Presence) -> None:
        pass

    def snapshot(self, counts: dict[str, dict[UserId, int]], newer: set[tuple[str, UserId]]) -> None:
        pass

    def instance_gone(self, instance: str) -> None:
        pass

    def link_changed(self, up: bool) -> None:
        pass


async def redis_cpu_s(client: aioredis.Redis) -> float:
    """Redis's own CPU time (INFO cpu: microsecond resolution, where /proc ticks are 10 ms)."""
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def one_run(conversations: int, url: str) -> dict[str, Any]:
    prefix = f"bench{random.randrange(1 << 30)}"
    client = aioredis.Redis.from_url(url)
    result: dict[str, Any] = {"conversations": conversations}
    listeners = [Counter() for _ in range(3)]
    brokers = [RedisBroker(url, f"i{i}", prefix=prefix) for i in range(3)]
    sender = RedisBroker(url, "sender", prefix=prefix)
    try:
        for broker, listener in zip(brokers, listeners, strict=True):
            await broker.start(listener)
        await sender.start(Counter())
        assert all(b.up for b in [*brokers, sender])

        # Following: instance 0 follows N one-to-one conversations.
        before = await used_memory(client)
        start = time.perf_counter()
        await brokers[0].follow(ConversationId(c) for c in range(1, conversations + 1))
        result["follow_s"] = time.perf_counter() - start
        result["bytes_per_followed"] = (await used_memory(client) - before) / conversations

        async def deliver(targets: list[int], followers: int) -> float:
            """Redis CPU µs per event delivered, EVENTS events to *targets* conversations."""
            for listener in listeners:
                listener.events = 0
                listener.done.clear()
                listener.want = EVENTS
            cpu0 = await redis_cpu_s(client)
            for i in range(EVENTS):
                c = targets[i % len(targets)]
                sender.send({"k": "m", "c": c, "s": i}, b'{"type":"chat:message"}')
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # let the sender's pipeline flush
            async with asyncio.timeout(60):
                await asyncio.gather(*(listeners[i].done.wait() for i in range(followers)))
            return (await redis_cpu_s(client) - cpu0) * 1e6 / (EVENTS * followers)

        # One-to-one traffic over 1,000 of the followed channels, then over all N.
        few = random.sample(range(1, conversations + 1), 1000)
        many = random.sample(range(1, conversations + 1), min(conversations, 50_000))
        result["redis_us_per_event_1k_channels_hot"] = await deliver(few, 1)
        result["redis_us_per_event_all_channels_hot"] = await deliver(many, 1)

        # A group conversation whose members are on 1, 2, 3 instances: one PUBLISH, copied.
        group = conversations + 1
        for followers in (1, 2, 3):
            for broker in brokers[:followers]:
                await broker.follow([ConversationId(group)])
            result[f"redis_us_per_delivery_group_{followers}_instances"] = await deliver([group], followers)
        return result
    finally:
        for broker in [*brokers, sender]:
            await broker.stop()
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=100_000)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is needed")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory]
        proc = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            runs = [await one_run(args.conversations, url) for _ in range(args.runs)]
        finally:
            proc.kill()
            proc.wait()
    print(json.dumps(runs, indent=2))
    out = Path(__file__).parent / "results" / f"cluster-channels-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(runs, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())

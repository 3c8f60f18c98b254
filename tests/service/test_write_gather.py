"""The writer's gathering (`--write-gather-ms`): a batch waits for company, up to a set time.

Real SQLite underneath; the store records what each transaction carried and can hold one open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from sohbet.chat.model import NewMessage, StoredMessage
from sohbet.store.sqlite import SqliteStore

from .conftest import Device, run, world

#: Longer than any test runs: a batch that waits this long is one that waits until it is full.
FOREVER_S = 3600.0


class RecordingStore(SqliteStore):
    """A real SQLite store that records each transaction's contents and can hold them open."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.appends: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        self.appends.append([m.content for m in batch])
        self.in_flight += 1
        try:
            await self.gate.wait()
            return await super().append(batch, now_ms)
        finally:
            self.in_flight -= 1


def send(device: Device, conversation: int, content: str) -> str:
    return device.send("chat:send", {"conversation_id": conversation, "content": content, "client_id": content})


async def until(condition: Callable[[], bool]) -> None:
    """Wait for *condition*, failing the test after 5 s."""
    async with asyncio.timeout(5.0):
        while not condition():
            await asyncio.sleep(0.001)


async def acked(device: Device, refs: list[str]) -> None:
    replies = [await device.socket.wait_for(ref=ref) for ref in refs]
    assert [r["type"] for r in replies] == ["chat:ack"] * len(refs)


def test_a_gathering_batch_waits_until_it_is_full(tmp_path: Path) -> None:
    """Sends that arrive one by one while a batch gathers share its transaction; the batch that
    fills up commits at once, without waiting out the gathering time."""
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, max_batch=3, gather_s=FOREVER_S) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            refs = []
            for content in ("m1", "m2", "m3"):
                refs.append(send(alice, x, content))
                await asyncio.sleep(0.005)  # the writer has seen it, and started a transaction if it would
            await acked(alice, refs)
            assert store.appends == [["m1", "m2", "m3"]]

    run(main())


def test_a_batch_commits_once_it_has_gathered_for_the_set_time(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "s.db")
    gather_s = 0.05

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, gather_s=gather_s) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            began = time.perf_counter()
            refs = [send(alice, x, "m1")]
            await asyncio.sleep(gather_s / 5)
            refs.append(send(alice, x, "m2"))
            await acked(alice, refs)
            assert time.perf_counter() - began >= gather_s
            assert store.appends == [["m1", "m2"]]

    run(main())


def test_while_one_transaction_commits_the_next_batch_gathers_and_starts_when_due(tmp_path: Path) -> None:
    """Depth 2: the timer of a gathering batch also runs while another transaction is held open."""
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, gather_s=0.02) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            store.gate.clear()
            try:
                refs = [send(alice, x, "x1")]
                await until(lambda: store.appends == [["x1"]])  # x1 gathered; its transaction is held open
                refs.append(send(alice, y, "y1"))
                await until(lambda: store.in_flight == 2)  # y1 gathered too and started beside it
                assert store.appends == [["x1"], ["y1"]]
            finally:
                store.gate.set()
            await acked(alice, refs)

    run(main())


def test_a_full_batch_starts_beside_a_transaction_in_flight(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, max_batch=2, gather_s=FOREVER_S) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            store.gate.clear()
            try:
                refs = [send(alice, x, "x1"), send(alice, x, "x2")]
                await until(lambda: store.in_flight == 1)
                refs += [send(alice, y, "y1")]
                await asyncio.sleep(0.005)  # the writer has seen it: a second transaction would start now
                refs += [send(alice, y, "y2")]
                await until(lambda: store.in_flight == 2)
                assert store.appends == [["x1", "x2"], ["y1", "y2"]]
            finally:
                store.gate.set()
            await acked(alice, refs)

    run(main())


def test_stopping_commits_a_gathering_batch_at_once(tmp_path: Path) -> None:
    """A shutdown does not wait out the gathering time, nor drop what gathered."""
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, gather_s=FOREVER_S) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            refs = [send(alice, x, "m1")]
            await asyncio.sleep(0.005)
            assert store.appends == []  # gathering
            await asyncio.wait_for(w.service.writer.stop(), 5.0)
            await acked(alice, refs)
            assert store.appends == [["m1"]]

    run(main())

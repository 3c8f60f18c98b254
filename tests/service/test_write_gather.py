"""The writer's gathering (`--write-gather-ms`): a batch waits for company, up to a set time.

Real SQLite underneath; the store records what each transaction carried and can hold one open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

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

    @contextmanager
    def held(self) -> Iterator[None]:
        """Transactions started inside wait until it is left (failing tests included)."""
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        self.appends.append([m.content for m in batch])
        self.in_flight += 1
        try:
            await self.gate.wait()
            return await super().append(batch, now_ms)
        finally:
            self.in_flight -= 1


class HookStore(RecordingStore):
    """Calls `hook` (once), synchronously, just before a transaction returns."""

    hook: Callable[[], object] | None = None

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        result = await super().append(batch, now_ms)
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return result


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
            with store.held():
                refs = [send(alice, x, "x1")]
                await until(lambda: store.appends == [["x1"]])  # x1 gathered; its transaction is held open
                refs.append(send(alice, y, "y1"))
                await until(lambda: store.in_flight == 2)  # y1 gathered too and started beside it
                assert store.appends == [["x1"], ["y1"]]
            await acked(alice, refs)

    run(main())


def test_a_full_batch_starts_beside_a_transaction_in_flight(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, max_batch=2, gather_s=FOREVER_S) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            with store.held():
                refs = [send(alice, x, "x1"), send(alice, x, "x2")]
                await until(lambda: store.in_flight == 1)
                refs += [send(alice, y, "y1")]
                await asyncio.sleep(0.005)  # the writer has seen it: a second transaction would start now
                refs += [send(alice, y, "y2")]
                await until(lambda: store.in_flight == 2)
                assert store.appends == [["x1", "x2"], ["y1", "y2"]]
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


@pytest.mark.parametrize("gather_s", [0.0, 0.02], ids=["no-gather", "gather-20ms"])
def test_a_send_behind_one_held_for_a_busy_conversation_starts_in_its_own_time(tmp_path: Path, gather_s: float) -> None:
    """Depth 2: x2 waits at the queue's head for x1's transaction (held open); y1, behind it,
    starts beside x1 after its own gathering time, not after x1 commits."""
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, gather_s=gather_s) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            with store.held():
                refs = [send(alice, x, "x1")]
                await until(lambda: store.appends == [["x1"]])
                refs.append(send(alice, x, "x2"))  # held: x is in flight
                await asyncio.sleep(gather_s + 0.03)  # x2's gathering time is over; it still waits
                refs.append(send(alice, y, "y1"))
                await until(lambda: store.in_flight == 2)
                assert store.appends == [["x1"], ["y1"]]
            await acked(alice, refs)

    run(main())


def test_a_send_gathers_from_its_own_time_not_from_an_older_one_held_at_the_head(tmp_path: Path) -> None:
    """x2 waits at the queue's head for x1's transaction long past its gathering time; y1 behind
    it still gathers for its own time, so y2, 10 ms later, joins its batch."""
    store = RecordingStore(tmp_path / "s.db")
    gather_s = 0.2

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, gather_s=gather_s) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            with store.held():
                refs = [send(alice, x, "x1")]
                await until(lambda: store.appends == [["x1"]])
                refs.append(send(alice, x, "x2"))  # held: x is in flight
                await asyncio.sleep(gather_s + 0.05)
                refs.append(send(alice, y, "y1"))
                await asyncio.sleep(0.01)
                refs.append(send(alice, y, "y2"))
                await until(lambda: store.in_flight == 2)
                assert store.appends == [["x1"], ["y1", "y2"]]
            await acked(alice, refs)

    run(main())


def test_gathering_under_uvloop_waits_on_its_timer_without_spinning(tmp_path: Path) -> None:
    """uvloop's timers count whole milliseconds and fire up to one early: a writer that rechecked
    the time then would arm a zero-delay timer over and over until the clock caught up."""
    store = RecordingStore(tmp_path / "s.db")
    waits = 0

    async def main() -> None:
        nonlocal waits
        async with world(tmp_path, store=store, send_rate_per_s=0, gather_s=0.0105) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            writer = w.service.writer
            wait = writer._wait

            async def counted(*args: Any) -> None:
                nonlocal waits
                waits += 1
                await wait(*args)

            writer._wait = counted  # type: ignore[method-assign]
            for i in range(5):
                await acked(alice, [send(alice, x, f"m{i}")])
            assert store.appends == [[f"m{i}"] for i in range(5)]

    uvloop.run(asyncio.wait_for(main(), 30.0))
    assert waits <= 5 * 3  # per batch: for the send, for the timer, for the commit


def test_gathered_batches_keep_each_conversations_seq_order(tmp_path: Path) -> None:
    """Depth 2 and gathering: sends of two conversations, interleaved while one transaction is
    held open, are acked and delivered in each conversation's seq order."""
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, gather_s=0.005) as w:
            alice, bob, carol = w.connect("alice"), w.connect("bob"), w.connect("carol")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            refs: dict[int, list[str]] = {x: [], y: []}
            with store.held():
                for i in range(8):
                    conversation = x if i % 3 else y
                    refs[conversation].append(send(alice, conversation, f"{conversation}-{i}"))
                    await asyncio.sleep(0.003)  # some sends gather together, some apart
            for conversation, member in ((x, bob), (y, carol)):
                acks = [await alice.socket.wait_for(ref=ref) for ref in refs[conversation]]
                seqs = [a["payload"]["message"]["seq"] for a in acks]
                assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
                got, n = member.socket, len(seqs)
                await until(lambda got=got, n=n: len(got.of_type("chat:message")) == n)  # type: ignore[misc]
                assert [e["payload"]["message"]["seq"] for e in got.of_type("chat:message")] == seqs

    run(main())


def test_without_gathering_an_ended_transaction_frees_its_conversations_before_the_next_batch(
    tmp_path: Path,
) -> None:
    """Depth 2, no gathering: x1 ends while x2 (held for x) and y1 wait; x1 is answered first, so
    x2 and y1 share the next transaction instead of taking one each."""
    store = HookStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            with store.held():
                refs = [send(alice, x, "x1")]
                await until(lambda: store.appends == [["x1"]])
                refs.append(send(alice, x, "x2"))
                await asyncio.sleep(0.005)
                store.hook = lambda: refs.append(send(alice, y, "y1"))
            await until(lambda: len(refs) == 3)
            await acked(alice, refs)
            assert store.appends == [["x1"], ["x2", "y1"]]

    run(main())


def test_a_batch_that_fills_cancels_its_timer_so_the_next_gathers_its_full_time(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "s.db")
    gather_s = 0.2

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, max_batch=2, gather_s=gather_s) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            first = [send(alice, x, "a1")]
            await asyncio.sleep(0.01)  # a1 gathers on its timer
            await acked(alice, [*first, send(alice, x, "a2")])  # full: goes at once
            await asyncio.sleep(gather_s / 2)  # a1's timer, had it been left, fires during b1's time
            began = time.perf_counter()
            await acked(alice, [send(alice, x, "b1")])
            assert time.perf_counter() - began >= gather_s * 0.95
            assert store.appends == [["a1", "a2"], ["b1"]]

    run(main())


def test_sends_held_for_a_busy_conversation_do_not_count_towards_a_full_batch(tmp_path: Path) -> None:
    """max_batch 2: x2 and x3 wait behind x1's transaction; y1 still gathers, and y2 joins it."""
    store = RecordingStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=2, max_batch=2, gather_s=0.05) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            with store.held():
                refs = [send(alice, x, "x1")]
                await until(lambda: store.appends == [["x1"]])
                refs += [send(alice, x, "x2"), send(alice, x, "x3"), send(alice, y, "y1")]
                await asyncio.sleep(0.01)
                refs.append(send(alice, y, "y2"))
                await until(lambda: store.in_flight == 2)
                assert store.appends == [["x1"], ["y1", "y2"]]
            await acked(alice, refs)

    run(main())

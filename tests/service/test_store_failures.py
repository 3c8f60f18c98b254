"""What the service does when storage fails under it: nothing acked is lost, nothing is half-done.

The store is the real SQLite one, with a gate the test holds (so a batch is provably in flight)
and failures the test switches on; everything above it runs for real.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import Conversation, ConversationKind, NewMessage, StoredMessage
from sohbet.errors import StoreUnavailable
from sohbet.store.sqlite import SqliteStore

from .conftest import run, world

POISON = "this one breaks the batch"


class TroubledStore(SqliteStore):
    """A real SQLite store whose appends can be held open and whose writes can fail on demand."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.gate = asyncio.Event()
        self.gate.set()
        self.appends: list[list[str]] = []  # the contents of each append call, in call order
        self.append_fails: Callable[[list[NewMessage]], Exception | None] = lambda batch: None
        self.writes_fail = False
        self.loads_fail = False  # loading a user's conversations
        self.load_gate = asyncio.Event()  # loads of a user's conversations wait while it is clear
        self.load_gate.set()
        self.loads_started = 0
        self.in_flight = self.most_in_flight = 0  # append calls under way at once

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        self.appends.append([m.content for m in batch])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            failure = self.append_fails(batch)
            if failure is not None:
                raise failure
            return await super().append(batch, now_ms)
        finally:
            self.in_flight -= 1

    async def conversation_ids(self, user: UserId) -> list[ConversationId]:
        self.loads_started += 1
        await self.load_gate.wait()
        if self.loads_fail:
            raise StoreUnavailable("switched off by the test")
        return await super().conversation_ids(user)

    async def create_conversation(
        self, members: list[UserId], title: str | None, kind: ConversationKind, now_ms: int
    ) -> tuple[Conversation, list[UserId]]:
        if self.writes_fail:
            raise StoreUnavailable("switched off by the test")
        return await super().create_conversation(members, title, kind, now_ms)

    async def remove_member(self, conversation_id: ConversationId, user: UserId) -> bool:
        if self.writes_fail:
            raise StoreUnavailable("switched off by the test")
        return await super().remove_member(conversation_id, user)


def poisoned(batch: list[NewMessage]) -> Exception | None:
    """A batch fails as a whole while it holds more than one message or the poisoned one."""
    if len(batch) > 1 or any(m.content == POISON for m in batch):
        return RuntimeError("a bug in the store for this batch")
    return None


def test_a_failing_batch_is_stored_message_by_message_and_only_the_bad_one_fails(tmp_path: Path) -> None:
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            store.gate.clear()
            first = alice.send("chat:send", {"conversation_id": cid, "content": "first", "client_id": "c0"})
            while store.appends != [["first"]]:  # "first" is in a transaction, held open
                await asyncio.sleep(0)
            refs = [
                alice.send("chat:send", {"conversation_id": cid, "content": text, "client_id": f"c{i}"})
                for i, text in enumerate(["good", POISON, "after"], start=1)
            ]
            store.append_fails = poisoned
            store.gate.set()
            replies = [await alice.socket.wait_for(ref=ref) for ref in [first, *refs]]
            assert [r["type"] for r in replies] == ["chat:ack", "chat:ack", "error", "chat:ack"]
            assert replies[2]["payload"]["code"] == "unavailable"
            # The three waiting sends went as one batch, which failed, then each alone.
            assert store.appends == [["first"], ["good", POISON, "after"], ["good"], [POISON], ["after"]]
            assert [r["payload"]["message"]["seq"] for r in replies if r["type"] == "chat:ack"] == [1, 2, 3]
            delivered = [m["payload"]["message"]["content"] for m in bob.socket.of_type("chat:message")]
            assert delivered == ["first", "good", "after"]
            # The writer lives on: the poisoned message, sent again once the store is mended, is stored.
            store.append_fails = lambda batch: None
            again = await alice.request("chat:send", {"conversation_id": cid, "content": POISON, "client_id": "c2"})
            assert again["type"] == "chat:ack" and again["payload"]["message"]["seq"] == 4

    run(main())


def test_a_full_write_queue_refuses_with_unavailable_and_loses_nothing_queued(tmp_path: Path) -> None:
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, max_batch=1, max_queue=1, send_rate_per_s=0) as w:
            alice = w.connect("alice")
            cid = await w.conversation(alice, "bob")
            store.gate.clear()
            held = alice.send("chat:send", {"conversation_id": cid, "content": "held", "client_id": "k1"})
            while not store.appends:
                await asyncio.sleep(0)
            queued = alice.send("chat:send", {"conversation_id": cid, "content": "queued", "client_id": "k2"})
            refused = await alice.request("chat:send", {"conversation_id": cid, "content": "over", "client_id": "k3"})
            assert refused["type"] == "error" and refused["payload"]["code"] == "unavailable"
            store.gate.set()
            for ref in (held, queued):
                assert (await alice.socket.wait_for(ref=ref))["type"] == "chat:ack"
            assert store.appends == [["held"], ["queued"]]

    run(main())


def test_a_create_the_store_could_not_write_costs_no_token(tmp_path: Path) -> None:
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, create_burst=1, create_rate_per_s=0.001, groups_per_hour=1) as w:
            alice = w.connect("alice")
            store.writes_fail = True
            failed = await alice.request("conversation:create", {"members": ["bob", "carol"]})
            assert failed["type"] == "error" and failed["payload"]["code"] == "unavailable"
            store.writes_fail = False
            # Both the create token and the hourly group allowance came back with the failure.
            created = await alice.request("conversation:create", {"members": ["bob", "carol"]})
            assert created["type"] == "conversation:created", created
            spent = await alice.request("conversation:create", {"members": ["bob", "dave"]})
            assert spent["payload"]["code"] == "rate_limited"  # the bucket is real: now it is empty

    run(main())


def test_a_leave_the_store_could_not_write_leaves_the_member_in(tmp_path: Path) -> None:
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob", "carol")
            store.writes_fail = True
            failed = await bob.request("conversation:leave", {"conversation_id": cid})
            assert failed["type"] == "error" and failed["payload"]["code"] == "unavailable"
            store.writes_fail = False
            sent = await bob.request("chat:send", {"conversation_id": cid, "content": "still here", "client_id": "b1"})
            assert sent["type"] == "chat:ack"
            assert (await alice.socket.wait_for("chat:message"))["payload"]["message"]["content"] == "still here"
            assert "bob" in await store.members(ConversationId(cid))

    run(main())


def test_a_lone_message_the_store_fails_on_is_unavailable_and_the_next_is_stored(tmp_path: Path) -> None:
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0) as w:
            alice = w.connect("alice")
            cid = await w.conversation(alice, "bob")
            store.append_fails = poisoned
            failed = await alice.request("chat:send", {"conversation_id": cid, "content": POISON, "client_id": "p"})
            assert failed["type"] == "error" and failed["payload"]["code"] == "unavailable"
            assert store.appends == [[POISON]]  # alone already: not tried a second time
            fine = await alice.request("chat:send", {"conversation_id": cid, "content": "fine", "client_id": "f"})
            assert fine["type"] == "chat:ack" and fine["payload"]["message"]["seq"] == 1  # the failure burnt no seq

    run(main())


def test_a_full_batch_of_other_conversations_goes_while_one_conversation_waits(tmp_path: Path) -> None:
    """Two transactions in flight, two messages per batch: the second batch skips the busy one."""
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, max_batch=2, depth=2) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            store.gate.clear()
            refs = [alice.send("chat:send", {"conversation_id": x, "content": "x1", "client_id": "x1"})]
            while store.appends != [["x1"]]:
                await asyncio.sleep(0)
            for cid, text in [(x, "x2"), (y, "y1"), (y, "y2"), (y, "y3")]:
                refs.append(alice.send("chat:send", {"conversation_id": cid, "content": text, "client_id": text}))
            while len(store.appends) < 2:
                await asyncio.sleep(0)
            assert store.appends == [["x1"], ["y1", "y2"]]  # x2 waits for x1; y3 for room in a batch
            store.gate.set()
            replies = [await alice.socket.wait_for(ref=ref) for ref in refs]
            seqs = {r["payload"]["message"]["content"]: r["payload"]["message"]["seq"] for r in replies}
            assert seqs == {"x1": 1, "x2": 2, "y1": 1, "y2": 2, "y3": 3}
            # x2 goes once x1 is done, while y1-y2 still hold y; y3 once they are done.
            assert store.appends[2:] == [["x2"], ["y3"]]

    run(main())


def test_no_more_transactions_than_the_depth_are_in_flight(tmp_path: Path) -> None:
    """Depth 1: while one batch commits, a send for another conversation waits in the queue."""
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store, send_rate_per_s=0, depth=1) as w:
            alice = w.connect("alice")
            x = await w.conversation(alice, "bob")
            y = await w.conversation(alice, "carol")
            store.gate.clear()
            refs = [alice.send("chat:send", {"conversation_id": x, "content": "x1", "client_id": "x1"})]
            while store.appends != [["x1"]]:  # x1 is in a transaction, held open
                await asyncio.sleep(0)
            wake = w.service.writer._wakes[0]
            refs.append(alice.send("chat:send", {"conversation_id": y, "content": "y1", "client_id": "y1"}))
            while wake.is_set():  # the marker: the writer has seen y1 and decided what to do with it
                await asyncio.sleep(0)
            store.gate.set()  # a second transaction, had one started, is already under way
            replies = [await alice.socket.wait_for(ref=ref) for ref in refs]
            assert [r["type"] for r in replies] == ["chat:ack", "chat:ack"]
            assert store.appends == [["x1"], ["y1"]] and store.most_in_flight == 1

    run(main())


def test_a_second_connection_loads_the_conversations_the_first_could_not(tmp_path: Path) -> None:
    """The first connection's load failed; the next one of the same user loads them, so the
    user counts as present in their conversations and hears a contact come online."""
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store) as w:
            carol = w.connect("carol")
            await w.conversation(carol, "alice", "bob")
            store.loads_fail = True
            phone = w.connect("alice")
            await w.settle()  # the load failed (and was logged)
            store.loads_fail = False
            laptop = w.connect("alice")  # alice is online already: not a new arrival
            await w.settle()
            w.connect("bob")
            online = await laptop.socket.wait_for("user:online")
            assert online["payload"] == {"user_id": "bob"}
            assert phone.socket.of_type("user:online")[-1]["payload"] == {"user_id": "bob"}

    run(main())


def test_two_connections_leaving_at_once_get_left_and_forbidden(tmp_path: Path) -> None:
    """The second leave waits on the same members load as the first: it must not be an internal."""
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        async with world(tmp_path, store=store) as w:
            # Made in storage, so nobody has its members cached: both leaves have to load them.
            group, _ = await store.create_conversation(
                [UserId("alice"), UserId("bob"), UserId("carol")], "g", ConversationKind.GROUP, 0
            )
            phone, laptop, bob = w.connect("alice"), w.connect("alice"), w.connect("bob")
            await w.settle()
            refs = [d.send("conversation:leave", {"conversation_id": group.id}) for d in (phone, laptop)]
            replies = [await d.socket.wait_for(ref=ref) for d, ref in zip((phone, laptop), refs, strict=True)]
            kinds = sorted(r["type"] if r["type"] != "error" else r["payload"]["code"] for r in replies)
            assert kinds == ["conversation:left", "forbidden"]
            assert w.service.ctx.internal_errors == 0
            marker = await bob.request("chat:send", {"conversation_id": group.id, "content": "m", "client_id": "m"})
            assert marker["type"] == "chat:ack"
            assert len(bob.socket.of_type("conversation:member_removed")) == 1  # told once, not twice

    run(main())


def test_sync_spends_from_its_own_slower_bucket(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:  # the defaults: sync 1/s in bursts of 5, reads 20/s
            alice = w.connect("alice")
            for _ in range(5):
                assert (await alice.request("sync", {"cursors": {}}))["type"] == "sync:done"
            limited = await alice.request("sync", {"cursors": {}})
            assert limited["payload"]["code"] == "rate_limited"
            assert 0 < limited["payload"]["retry_after_ms"] <= 1000
            assert (await alice.request("conversation:list", {}))["type"] != "error"  # other reads go on

    run(main())


def test_a_shared_load_that_fails_after_its_waiters_left_is_not_reported_as_unretrieved(tmp_path: Path) -> None:
    """A user's conversations are loaded once for everyone who needs them, behind a shield: a
    waiter cancelled (a request ended by a shutdown) leaves the load running. When it then fails
    with nobody left waiting, that is an expected end, not asyncio's "exception was never
    retrieved" (which the server logs with a traceback)."""
    store = TroubledStore(tmp_path / "s.db")

    async def main() -> None:
        reports: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reports.append(context))
        async with world(tmp_path, store=store) as w:
            ctx = w.service.ctx
            store.load_gate.clear()
            waiter = asyncio.ensure_future(ctx.conversations_of(UserId("bob")))
            while not store.loads_started:
                await asyncio.sleep(0)
            waiter.cancel()
            store.loads_fail = True
            store.load_gate.set()
            for _ in range(10):
                await asyncio.sleep(0)
            del waiter
            gc.collect()
            await asyncio.sleep(0)
        assert [r["message"] for r in reports] == []

    run(main())


class LostAnswerStore(TroubledStore):
    """Its first append commits, then fails as if the answer were lost on the way back; once
    *evicting*, each members load empties the member cache right after it lands (as other
    groups' loads would with a small `member_cache_size`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lost = False
        self.evicting = False
        self.hub: Any = None

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        stored = await super().append(batch, now_ms)
        if not self.lost:
            self.lost = True
            raise StoreUnavailable("the answer was lost after the commit")
        return stored

    async def members(self, conversation_id: ConversationId) -> list[UserId]:
        found = await super().members(conversation_id)
        if self.evicting:
            asyncio.get_running_loop().call_soon(self.hub.drop_cached_members)
        return found


def test_a_replay_of_a_message_whose_answer_was_lost_reaches_the_members_despite_evictions(tmp_path: Path) -> None:
    """The retry of a message stored without an answer, answered from storage because the
    sender's bucket is empty, delivers it: nobody had. Its group's members, evicted and loaded
    again for it, are evicted again before the answer: the set loaded must still be used."""

    async def main() -> None:
        store = LostAnswerStore(tmp_path / "lost.db")
        async with world(tmp_path, store=store, send_rate_per_s=1.0, send_burst=1) as w:
            store.hub = w.service.ctx.hub
            alice, bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            lost = await alice.request("chat:send", {"conversation_id": cid, "content": "lost", "client_id": "l"})
            assert lost["payload"]["code"] == "unavailable"  # stored all the same
            await alice.ok("chat:send", {"conversation_id": cid, "content": "spends", "client_id": "s"})
            store.evicting = True
            store.hub.drop_cached_members()
            again = await alice.ok("chat:send", {"conversation_id": cid, "content": "lost", "client_id": "l"})
            assert again["message"]["content"] == "lost"
            await w.settle()
            contents = [m["payload"]["message"]["content"] for m in bob.socket.of_type("chat:message")]
            assert sorted(contents) == ["lost", "spends"]

    run(main())

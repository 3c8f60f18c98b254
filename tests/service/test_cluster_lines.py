"""One instance of a cluster, with the broker faked (the real one runs in
tests/integration/test_cluster.py): what it does with what other instances tell it, step by
step, on a real SQLite store that another instance's writes go into directly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sohbet.broker import REFUSED, Header, Kind, Listener, Presence
from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import ConversationKind, NewMessage
from sohbet.errors import StoreUnavailable
from sohbet.service.cluster import GAP_WAIT_S, MEMBERSHIP_POLL_S, SWEEP_S
from sohbet.store.sqlite import SqliteStore

from .conftest import Device, World, run, world


class FakeBroker:
    """Records what the service sends and follows; the test plays the other instances."""

    def __init__(self, admits: int | None = 1) -> None:
        self.admits = admits
        self.listener: Listener | None = None
        self.sent: list[tuple[Header, bytes]] = []
        self.followed: set[ConversationId] = set()
        self.released: list[UserId] = []
        self.refollowed: set[ConversationId] = set()

    instance_id = "here"
    clustered = True
    up = True

    async def start(self, listener: Listener) -> None:
        self.listener = listener

    async def stop(self) -> None:
        pass

    def send(self, header: Header, data: bytes) -> None:
        self.sent.append((dict(header), data))

    async def follow(self, conversations: Iterable[ConversationId]) -> None:
        self.followed.update(conversations)

    def unfollow(self, conversations: Iterable[ConversationId]) -> None:
        self.followed.difference_update(conversations)

    async def refollow(self, conversations: Iterable[ConversationId]) -> None:
        self.refollowed.update(conversations)

    async def admit(self, user: UserId, limit: int, conversations: Iterable[ConversationId]) -> int | None:
        return self.admits

    def release(self, user: UserId, conversations: Iterable[ConversationId]) -> None:
        self.released.append(user)

    def stats(self) -> dict[str, int]:
        return {}

    def message(self, conversation: int, seq: int, content: str = "") -> None:
        """Another instance stored *seq* and published it."""
        obj = {"message": {"conversation_id": conversation, "seq": seq, "content": content or f"m{seq}"}}
        data = orjson.dumps({"type": "chat:message", "payload": obj})
        assert self.listener is not None
        self.listener.event({"k": Kind.MESSAGE.value, "i": "other", "c": conversation, "s": seq}, data)


async def stored_elsewhere(store: SqliteStore, conversation: int, count: int) -> None:
    """Messages another instance stores (no event: the test decides what it publishes)."""
    for i in range(count):
        batch = [NewMessage(ConversationId(conversation), UserId("bob"), f"else{i}-{id(store)}", f"else {i}")]
        await store.append(batch, 0)


def seqs(device: Device, conversation: int) -> list[int]:
    return [
        m["payload"]["message"]["seq"]
        for m in device.socket.of_type("chat:message")
        if m["payload"]["message"]["conversation_id"] == conversation
    ]


async def pair(w: World) -> tuple[Device, int]:
    alice = w.connect("alice")
    await w.settle()
    conversation = await w.conversation(alice, "bob")
    return alice, conversation


def test_messages_from_elsewhere_are_delivered_in_seq_order_and_once(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            assert conversation in broker.followed
            await stored_elsewhere(store, conversation, 6)
            broker.message(conversation, 1)
            broker.message(conversation, 3)  # past a gap: waits for 2
            assert seqs(alice, conversation) == [1]
            broker.message(conversation, 2)  # ... which arrives in time: no storage read,
            for _ in range(5):  # and no waiting out the rest of GAP_WAIT_S: a few loop turns
                await asyncio.sleep(0)
            assert seqs(alice, conversation) == [1, 2, 3]
            cluster = w.service.cluster
            assert cluster.counters["filled"] == 0 and cluster.counters["gaps"] == 1
            broker.message(conversation, 5)  # 4 never comes: read from storage
            await asyncio.sleep(GAP_WAIT_S * 3)
            await w.settle()
            assert seqs(alice, conversation) == [1, 2, 3, 4, 5]
            assert cluster.counters["filled"] == 1
            broker.message(conversation, 4)  # late, and a repeat: dropped
            broker.message(conversation, 6)
            assert seqs(alice, conversation) == [1, 2, 3, 4, 5, 6]
            assert cluster.counters["duplicates"] == 1

    run(main())


def test_what_was_missed_while_the_link_was_down_is_read_when_it_is_back(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            await stored_elsewhere(store, conversation, 3)
            broker.message(conversation, 1)
            assert broker.listener is not None
            broker.listener.link_changed(False)
            broker.listener.link_changed(True)  # 2 and 3 were published while it was down
            await w.settle()
            assert seqs(alice, conversation) == [1, 2, 3]

    run(main())


def test_a_gap_storage_cannot_fill_is_skipped_not_waited_on_forever(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            broker.message(conversation, 1)

            async def down(*_: Any) -> Any:
                raise StoreUnavailable("down")

            store.messages_between = down  # type: ignore[method-assign]
            broker.message(conversation, 3)
            await asyncio.sleep(GAP_WAIT_S * 3)
            await w.settle()
            assert seqs(alice, conversation) == [1, 3]  # the client's sync fills 2
            broker.message(conversation, 4)
            assert seqs(alice, conversation) == [1, 3, 4]

    run(main())


def test_presence_from_other_instances_is_announced_to_contacts_here(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        async with world(tmp_path, broker=broker, presence_grace_s=5.0) as w:
            alice, conversation = await pair(w)
            listener = broker.listener
            assert listener is not None
            listener.presence(Presence("x", UserId("bob"), 1, (ConversationId(conversation),)))
            await w.settle()
            assert alice.socket.of_type("user:online")[-1]["payload"] == {"user_id": "bob"}
            listener.presence(Presence("y", UserId("bob"), 2))  # a second instance: nothing new
            listener.instance_gone("x")  # still on y
            w.service.tick(w.clock.wall(), w.clock.now() + 10)
            assert alice.socket.of_type("user:offline") == []
            # The registry read after a reconnection no longer has y: gone, grace, offline.
            listener.snapshot({"z": {UserId("carol"): 1}}, set())
            w.clock.advance(4)
            w.service.tick(w.clock.wall(), w.clock.now())
            assert alice.socket.of_type("user:offline") == []  # within the grace period
            w.clock.advance(2)
            w.service.tick(w.clock.wall(), w.clock.now())
            await w.settle()
            assert alice.socket.of_type("user:offline")[-1]["payload"] == {"user_id": "bob"}
            # A newer entry than the snapshot (heard of after the link came up) stands.
            listener.presence(Presence("z", UserId("bob"), 1, (ConversationId(conversation),)))
            listener.snapshot({"z": {}}, {("z", UserId("bob"))})
            assert w.service.hub.is_online(UserId("bob"))
            assert w.service.cluster.remote_connections(UserId("bob")) == 1

    run(main())


def test_a_connection_waits_for_admission_and_the_cluster_limit_refuses_it(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        async with world(tmp_path, broker=broker) as w:
            alice = w.connect("alice")
            ref = alice.send("presence:query", {"user_ids": []})  # before hello: it waits
            assert alice.socket.sent == []
            await alice.socket.wait_for(ref=ref)
            assert [m["type"] for m in alice.socket.sent] == ["hello", "presence:state"]
            broker.admits = REFUSED
            refused = w.connect("alice")
            await w.settle()
            assert refused.socket.closed_with is not None and refused.socket.closed_with[0] == 1008
            assert refused.socket.of_type("hello") == []
            broker.admits = 1
            chatty = w.connect("carol")
            for _ in range(33):
                chatty.send("presence:query", {"user_ids": []})
            assert chatty.socket.closed_with == (1008, "more than 32 messages before hello")
            bulky = w.connect("dave")  # few messages, but large ones: bounded in bytes too
            for _ in range(3):
                bulky.send("presence:query", {"user_ids": ["x" * 30_000]})
            assert bulky.socket.closed_with is not None and bulky.socket.closed_with[0] == 1008
            alice.disconnect()
            assert broker.released == ["alice"]

    run(main())


@pytest.mark.parametrize("kind", ["typing", "read", "publish", "broadcast", "disconnect", "removed"])
def test_events_from_elsewhere_reach_the_right_connections_here(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        broker = FakeBroker()
        async with world(tmp_path, broker=broker) as w:
            alice, conversation = await pair(w)
            bob = w.connect("bob")
            await w.settle()
            listener = broker.listener
            assert listener is not None
            data = orjson.dumps({"type": "x:marker", "payload": {}})
            header: dict[str, Any] = {
                "typing": {"k": "t", "c": conversation, "u": "bob"},
                "read": {"k": "r", "c": conversation},
                "publish": {"k": "p", "us": ["alice"]},
                "broadcast": {"k": "b"},
                "disconnect": {"k": "d", "u": "alice", "code": 4501, "reason": "bye"},
                "removed": {"k": "x", "c": conversation, "u": "alice"},
            }[kind]
            listener.event({"i": "other", **header}, data)
            got_alice = bool(alice.socket.of_type("x:marker"))
            got_bob = bool(bob.socket.of_type("x:marker"))
            expected = {
                "typing": (True, False),  # not the typist
                "read": (True, True),
                "publish": (True, False),
                "broadcast": (True, True),
                "disconnect": (False, False),
                "removed": (True, True),
            }[kind]
            assert (got_alice, got_bob) == expected
            if kind == "disconnect":
                assert alice.socket.closed_with == (4501, "bye") and bob.socket.closed_with is None
            if kind == "removed":  # she no longer gets the conversation, nor may send to it
                reply = await alice.request(
                    "chat:send", {"conversation_id": conversation, "content": "x", "client_id": "z"}
                )
                assert reply["payload"]["code"] == "forbidden"

    run(main())


@pytest.mark.parametrize("how", ["created", "added"])
def test_a_join_elsewhere_delivers_what_was_stored_before_this_instance_followed(tmp_path: Path, how: str) -> None:
    """Another instance makes Alice a member and at once stores a message, published before this
    instance follows the conversation: the join's own seq (where the conversation stood) makes
    the message reach her from storage once it is followed."""

    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice = w.connect("alice")
            await w.settle()
            # Made elsewhere: a group of bob and carol, then alice added (or created with her).
            members = [UserId("bob"), UserId("carol")] + ([UserId("alice")] if how == "created" else [])
            conversation, _ = await store.create_conversation(members, "g", ConversationKind.GROUP, 0)
            if how == "added":
                await store.add_member(conversation.id, UserId("alice"), 0)
            await stored_elsewhere(store, conversation.id, 1)  # seq 1, its event already gone by
            listener = broker.listener
            assert listener is not None
            data = orjson.dumps({"type": "x:joined", "payload": {}})
            if how == "created":
                header = {"k": "n", "c": conversation.id, "m": members, "s": 0, "new": True}
            else:
                header = {"k": "a", "c": conversation.id, "u": "alice", "s": 0}
            listener.event({"i": "other", **header}, data)
            await w.settle()
            assert conversation.id in broker.followed
            assert seqs(alice, conversation.id) == [1]
            broker.message(conversation.id, 2)
            assert seqs(alice, conversation.id) == [1, 2]

    run(main())


def test_a_leave_missed_while_the_link_was_down_takes_effect_when_it_is_back(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            listener = broker.listener
            assert listener is not None
            listener.link_changed(False)
            await store.remove_member(ConversationId(conversation), UserId("alice"))  # elsewhere, unheard
            listener.link_changed(True)
            await w.settle()
            removed = alice.socket.of_type("conversation:member_removed")
            assert [m["payload"] for m in removed] == [{"conversation_id": conversation, "user_id": "alice"}]
            await w.settle()
            assert conversation not in broker.followed
            broker.message(conversation, 1)
            reply = await alice.request(
                "chat:send", {"conversation_id": conversation, "content": "x", "client_id": "y"}
            )
            assert reply["payload"]["code"] == "forbidden"
            assert seqs(alice, conversation) == []

    run(main())


def test_another_instance_back_from_a_partition_makes_this_one_catch_up(tmp_path: Path) -> None:
    """What an instance stored while cut off from Redis reached nobody: when it is back it
    says so, and the others read what they missed (and who left meanwhile)."""

    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            await stored_elsewhere(store, conversation, 2)  # by the cut-off instance
            listener = broker.listener
            assert listener is not None
            listener.event({"k": "l", "i": "other"}, b"")
            await w.settle()
            assert seqs(alice, conversation) == [1, 2]

    run(main())


def test_a_join_missed_while_the_link_was_down_is_followed_when_it_is_back(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, _ = await pair(w)
            listener = broker.listener
            assert listener is not None
            listener.link_changed(False)
            members = [UserId("bob"), UserId("alice"), UserId("carol")]
            group, _ = await store.create_conversation(members, "made elsewhere", ConversationKind.GROUP, 0)
            listener.link_changed(True)
            await w.settle()
            assert group.id in broker.followed
            assert [h["k"] for h, _ in broker.sent].count("l") == 1  # it told the others it is back
            broker.message(group.id, 1)
            assert seqs(alice, group.id) == [1]

    run(main())


def test_a_leave_nobody_told_of_is_read_from_the_membership_log(tmp_path: Path) -> None:
    """The instance that removed Alice died before it published: no event, no relink. The
    membership log, read every second, still takes her out here, and tells her."""

    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            await asyncio.sleep(MEMBERSHIP_POLL_S * 1.5)  # the reader has found where the log ends
            await store.remove_member(ConversationId(conversation), UserId("alice"))
            notice = await alice.socket.wait_for("conversation:member_removed", timeout=MEMBERSHIP_POLL_S * 4)
            assert notice["payload"] == {"conversation_id": conversation, "user_id": "alice"}
            await w.settle()
            assert conversation not in broker.followed
            reply = await alice.request("chat:history", {"conversation_id": conversation})
            assert reply["payload"]["code"] == "forbidden"
            # ... and a join nobody told of is followed.
            group, _ = await store.create_conversation(
                [UserId("bob"), UserId("alice"), UserId("carol")], "g", ConversationKind.GROUP, 0
            )
            for _ in range(40):
                await asyncio.sleep(MEMBERSHIP_POLL_S / 4)
                if group.id in broker.followed:
                    break
            assert group.id in broker.followed
            assert len(alice.socket.of_type("conversation:member_removed")) == 1  # told once

    run(main())


def test_a_connection_is_admitted_on_what_storage_says_not_on_a_set_another_instance_sent(tmp_path: Path) -> None:
    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            bob = w.connect("bob")
            await w.settle()
            conversation = await w.conversation(bob, "carol")
            listener = broker.listener
            assert listener is not None
            # Another instance says Alice is online there and in Bob's conversation: stale, or a lie.
            listener.presence(Presence("x", UserId("alice"), 1, (ConversationId(conversation),)))
            alice = w.connect("alice")
            await w.settle()
            reply = await alice.request("chat:history", {"conversation_id": conversation})
            assert reply["payload"]["code"] == "forbidden"
            await bob.ok("chat:send", {"conversation_id": conversation, "content": "not for alice", "client_id": "n"})
            await w.settle()
            assert seqs(alice, conversation) == []

    run(main())


class GatedBroker(FakeBroker):
    """Admission waits at `follow` until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.gate_admit = False  # also hold admissions whose conversations are all followed

    async def follow(self, conversations: Iterable[ConversationId]) -> None:
        wanted = list(conversations)
        if self.gate is not None:
            await self.gate.wait()
        await super().follow(wanted)

    async def admit(self, user: UserId, limit: int, conversations: Iterable[ConversationId]) -> int | None:
        if self.gate is not None and self.gate_admit:
            await self.gate.wait()
        return await super().admit(user, limit, conversations)


def test_a_connection_being_admitted_keeps_its_conversations_and_can_be_disconnected(tmp_path: Path) -> None:
    async def main() -> None:
        broker = GatedBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            bob, conversation = await pair_of(w, "bob", "alice")
            broker.gate = asyncio.Event()
            # Alice connects; her admission waits. Meanwhile Bob, the conversation's only member
            # here, leaves: a reconcile must not drop what her admission is following.
            alice = w.connect("alice")
            for _ in range(5):
                await asyncio.sleep(0)
            await bob.ok("conversation:leave", {"conversation_id": conversation})
            for _ in range(5):
                await asyncio.sleep(0)
            broker.gate.set()
            await alice.socket.wait_for("hello")
            await w.settle()
            assert conversation in broker.followed
            broker.message(conversation, 1)
            assert seqs(alice, conversation) == [1]
            # A ban while a connection is being admitted closes it too, and it never says hello.
            broker.gate = asyncio.Event()
            broker.gate_admit = True
            waiting = w.connect("alice")
            for _ in range(5):
                await asyncio.sleep(0)
            assert w.service.close_user(UserId("alice"), 4501, "banned") == 2
            assert waiting.socket.closed_with == (4501, "banned")
            waiting.disconnect()  # what the transport does once the close is done
            broker.gate.set()
            await w.settle()
            assert waiting.socket.of_type("hello") == []

    run(main())


async def pair_of(w: World, user: str, other: str) -> tuple[Device, int]:
    device = w.connect(user)
    await w.settle()
    conversation = await w.conversation(device, other)
    return device, conversation


class FlakyStore(SqliteStore):
    """A real SQLite store whose reads the cluster makes fail on demand."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.failing: set[str] = set()
        self.log_changes: list[Any] | None = None
        self.asked_after: list[int] = []  # where each read of the log started

    async def last_seqs(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, int]:
        if "last_seqs" in self.failing:
            raise StoreUnavailable("down")
        return await super().last_seqs(conversation_ids)

    async def members_of(self, conversation_ids: list[ConversationId]) -> dict[ConversationId, list[UserId]]:
        if "members_of" in self.failing:
            raise StoreUnavailable("down")
        return await super().members_of(conversation_ids)

    async def conversation_ids(self, user: UserId) -> list[ConversationId]:
        if "conversation_ids" in self.failing:
            raise StoreUnavailable("down")
        return await super().conversation_ids(user)

    async def membership_changes(self, after_id: int, limit: int) -> list[Any]:
        self.asked_after.append(after_id)
        if self.log_changes is not None:
            return [c for c in self.log_changes if c.id > after_id][:limit]
        return await super().membership_changes(after_id, limit)


def test_storage_failing_while_the_cluster_reads_it_degrades_and_recovers(tmp_path: Path) -> None:
    """Storage down while a conversation is followed, or while memberships are rechecked after
    a relink: what could not be read is logged and skipped; nothing stops, and once storage
    answers the next event is delivered. An event kind from a newer release is ignored."""

    async def main() -> None:
        broker = FakeBroker()
        store = FlakyStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            listener = broker.listener
            assert listener is not None
            store.failing = {"last_seqs", "members_of", "conversation_ids"}
            group, _ = await store.create_conversation(
                [UserId("alice"), UserId("bob"), UserId("c")], "g", ConversationKind.GROUP, 0
            )
            w.service.hub.add_member(group.id, UserId("alice"))  # as an event would: followed, base unknown
            w.service.cluster.reconcile_soon()
            await w.settle()
            assert group.id in broker.followed
            listener.link_changed(False)
            listener.link_changed(True)  # rechecks fail: logged, skipped
            await w.settle()
            store.failing = set()
            broker.message(group.id, 1)  # the base was unknown: the first message sets it
            assert seqs(alice, group.id) == [1]
            listener.event({"k": "zz", "i": "newer"}, b"")  # a kind this release does not know
            broker.message(conversation, 1)
            assert seqs(alice, conversation) == [1]

    run(main())


def test_a_hole_in_the_membership_log_waits_then_is_skipped(tmp_path: Path) -> None:
    """Log ids are given out before commit: a missing one may be a transaction still
    committing (wait for it) or one rolled back (after a while, go on without it)."""
    from sohbet.store import MembershipChange  # noqa: PLC0415

    async def main() -> None:
        broker = FakeBroker()
        store = FlakyStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            start = await store.membership_log_end()
            await asyncio.sleep(MEMBERSHIP_POLL_S * 1.5)  # the reader knows where the log ends
            cid, user = ConversationId(conversation), UserId("alice")
            # id start+1 never commits; start+2 says Alice left.
            store.log_changes = [MembershipChange(start + 2, cid, user, False)]
            await alice.socket.wait_for("conversation:member_removed", timeout=MEMBERSHIP_POLL_S * 4)
            # Applied at once (idempotent), but the reader keeps waiting at the hole; past 5 s it
            # skips it and reads on, so a later change is taken.
            await asyncio.sleep(MEMBERSHIP_POLL_S * 1.5)
            assert store.asked_after[-1] == start  # waiting at the hole: reading from before it
            w.clock.advance(6)
            store.log_changes.append(MembershipChange(start + 3, cid, user, True))
            for _ in range(40):
                await asyncio.sleep(MEMBERSHIP_POLL_S / 4)
                if w.service.hub.is_member(user, cid) and store.asked_after[-1] >= start + 2:
                    break
            assert w.service.hub.is_member(user, cid)
            assert store.asked_after[-1] >= start + 2  # the hole was given up: the reader moved on

    run(main())


def test_a_message_whose_event_never_came_is_found_by_the_sweep(tmp_path: Path) -> None:
    """No event, no later message, no relink: the last message of a conversation simply never
    arrived (a subscription lost without an error). The sweep compares storage with what was
    delivered, delivers it, and subscribes again."""

    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker) as w:
            alice, conversation = await pair(w)
            await stored_elsewhere(store, conversation, 1)
            w.service.tick(w.clock.wall(), w.clock.now())
            await w.settle()
            w.clock.advance(SWEEP_S)
            w.service.tick(w.clock.wall(), w.clock.now())
            await w.settle()
            assert seqs(alice, conversation) == [1]
            assert conversation in broker.refollowed
            assert w.service.cluster.counters["swept"] == 1
            broker.message(conversation, 1)  # late after all: not twice
            assert seqs(alice, conversation) == [1]

    run(main())


def test_a_user_known_only_from_the_registry_is_announced_offline_after_their_conversations_are_read(
    tmp_path: Path,
) -> None:
    """An instance that had nobody connected when Bob came online elsewhere did not read his
    conversations; when he goes, it reads them first, then tells his contacts here."""

    async def main() -> None:
        broker = FakeBroker()
        store = SqliteStore(str(tmp_path / "c.db"))
        async with world(tmp_path, store=store, broker=broker, presence_grace_s=1.0) as w:
            await store.create_conversation([UserId("alice"), UserId("bob")], None, ConversationKind.DIRECT, 0)
            listener = broker.listener
            assert listener is not None
            listener.presence(Presence("x", UserId("bob"), 1))  # nobody here yet: nothing read
            assert w.service.hub.conversations(UserId("bob")) is None
            alice = w.connect("alice")
            await w.settle()
            listener.presence(Presence("x", UserId("bob"), 0))
            w.clock.advance(2)
            w.service.tick(w.clock.wall(), w.clock.now())
            await w.settle()
            assert alice.socket.of_type("user:offline")[-1]["payload"] == {"user_id": "bob"}

    run(main())

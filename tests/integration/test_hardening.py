"""What one hostile user can make the server do, over real sockets: every request type is rate
limited, work waiting for storage is bounded per connection, probing conversations loads
nothing, caches stay bounded, malformed cursors are `bad_request`, and no peer input writes
tracebacks into the log.

Each test runs on SQLite and on Postgres (the `database_url` fixture).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sohbet.chat.ids import UserId
from sohbet.chat.model import ConversationKind
from sohbet.errors import StoreUnavailable
from sohbet.store import MessageStore

from ..chatkit import Harness, chat_server, open_store, token, with_chat

Run = Callable[[Coroutine[Any, Any, Any]], Any]
A, B, C = UserId("alice"), UserId("bob"), UserId("carol")

#: Two requests of each kind, then the third waits 100 s: nothing in a test refills a bucket.
SLOW = {"per_s": 0.01, "burst": 2}


async def group(h: Harness, *members: UserId) -> int:
    """A conversation made straight in storage, so that making it spends no token."""
    found, _ = await h.store.create_conversation(list(members), "g", ConversationKind.GROUP, 0)
    return int(found.id)


def assert_limited(reply: dict[str, Any], ref: str, low_ms: int, high_ms: int) -> None:
    assert reply["type"] == "error" and reply["ref"] == ref, reply
    assert reply["payload"]["code"] == "rate_limited"
    assert low_ms <= reply["payload"]["retry_after_ms"] <= high_ms


def test_every_request_type_has_its_own_bucket_per_user(run: Run, database_url: str) -> None:
    rates = {f"{family}_{key}": value for family in ("create", "query", "sync", "signal") for key, value in (
        ("rate_per_s", SLOW["per_s"]), ("burst", SLOW["burst"]))}  # fmt: skip

    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(**rates)) as h:
            # Made in storage before she connects: the server learns her conversations then.
            cid = await group(h, A, B, C)
            leavable = [await group(h, A, B, C) for _ in range(3)]
            alice = await h.connect("alice")
            requests: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
                ("conversation:create", lambda i: {"members": ["bob", f"x{i}"]}),
                ("conversation:leave", lambda i: {"conversation_id": leavable[i]}),
                ("auth:refresh", lambda i: {"token": token("alice")}),
                ("chat:history", lambda i: {"conversation_id": cid}),
                ("sync", lambda i: {"cursors": {}}),
                ("conversation:list", lambda i: {}),
                ("conversation:members", lambda i: {"conversation_id": cid}),
                ("presence:query", lambda i: {"user_ids": ["bob"]}),
            ]
            for kind, payload in requests:  # each after the others are spent: buckets are per type
                # The harness's connect probes with one presence:query (see chatkit.Harness.connect).
                for i in range(1 if kind == "presence:query" else 2):
                    reply = await alice.request(kind, payload(i))
                    assert reply["type"] != "error", (kind, reply)
                third = await alice.request(kind, payload(2), ref=f"third-{kind}")
                assert_limited(third, f"third-{kind}", 99_000, 100_000)
            # chat:read answers nothing when it works: the third one's error is the marker.
            for _ in range(2):
                await alice.send_raw({"type": "chat:read", "payload": {"conversation_id": cid, "seq": 0}})
            assert_limited(
                await alice.request("chat:read", {"conversation_id": cid, "seq": 0}, ref="r"), "r", 99_000, 100_000
            )
            # The bucket is the user's, not the connection's.
            second = await h.connect("alice")
            assert_limited(
                await second.request("chat:history", {"conversation_id": cid}, ref="h"), "h", 90_000, 100_000
            )
            # A refused request spends nothing: bob's malformed ones leave his bucket full.
            bob = await h.connect("bob")
            for _ in range(3):
                assert (await bob.request("chat:history", {"conversation_id": "x"}))["payload"]["code"] == "bad_request"
            for _ in range(2):
                assert (await bob.request("chat:history", {"conversation_id": cid}))["type"] == "chat:history"

    run(main())


def test_typing_over_its_limit_is_dropped_silently(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(signal_rate_per_s=0.01, signal_burst=2)) as h:
            rooms = [await group(h, A, B, C) for _ in range(3)]
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            for room in rooms:  # three conversations: the 2 s typing throttle is per conversation
                await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": room}})
            await alice.send(rooms[2], "marker")  # sent after the third notice, on the same connection
            got = [await bob.recv() for _ in range(3)]
            assert [(m["type"], m["payload"].get("conversation_id")) for m in got[:2]] == [
                ("chat:typing", rooms[0]),
                ("chat:typing", rooms[1]),
            ]
            assert got[2]["type"] == "chat:message"  # the third notice never came, nor an error
            assert [m for m in alice.backlog if m["type"] == "error"] == []

    run(main())


def test_group_creation_per_hour_and_conversations_per_user(run: Run, database_url: str) -> None:
    async def main() -> None:
        config = with_chat(create_rate_per_s=0, groups_per_hour=2, max_conversations_per_user=4)
        async with chat_server(database_url, chat=config) as h:
            alice = await h.connect("alice")
            for i in range(2):
                await alice.create("bob", f"g{i}")
            refused = await alice.request("conversation:create", {"members": ["bob", "carol"]}, ref="g")
            assert_limited(refused, "g", 1_790_000, 1_800_000)  # 2 groups an hour: the next in 30 minutes
            await alice.create("bob")  # direct conversations are not groups: still allowed
            await alice.create("carol")
            full = await alice.request("conversation:create", {"members": ["dave"]})
            assert full["payload"]["code"] == "too_large"  # in 4 conversations, the most allowed

    run(main())


class GatedStore:
    """A real store whose reads of history wait until the test opens the gate."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.waiting = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def history(self, *args: Any) -> Any:
        self.waiting += 1
        await self.gate.wait()
        return await self._store.history(*args)


def test_requests_waiting_for_storage_are_bounded_per_connection(run: Run, database_url: str) -> None:
    async def main() -> None:
        real = await open_store(database_url)
        gated = GatedStore(real)
        try:
            config = with_chat(max_requests_in_flight=3, query_rate_per_s=0)
            async with chat_server(database_url, chat=config, store=gated) as h:  # type: ignore[arg-type]
                cid = await group(h, A, B, C)
                alice = await h.connect("alice")
                for i in range(3):  # one reads (and waits at the gate), two wait behind it
                    await alice.send_raw({"type": "chat:history", "payload": {"conversation_id": cid}, "ref": f"h{i}"})
                refused = await alice.request("chat:history", {"conversation_id": cid}, ref="h3")
                assert_limited(refused, "h3", 100, 100)
                other = await h.connect("alice")  # the bound is per connection
                await other.send_raw({"type": "chat:history", "payload": {"conversation_id": cid}, "ref": "o"})
                gated.gate.set()
                assert (await other.expect("chat:history", ref="o"))["payload"]["messages"] == []
                for i in range(3):
                    assert (await alice.expect("chat:history", ref=f"h{i}"))["payload"]["conversation_id"] == cid
                assert gated.waiting == 4
        finally:
            await real.close()

    run(main())


def test_probing_conversations_that_are_not_yours_loads_nobody(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            others = [await group(h, B, C, UserId(f"u{i}")) for i in range(5)]
            mallory = await h.connect("mallory")
            await mallory.ok("conversation:list", {})  # her own conversations are loaded (none)
            for cid in others:  # 15 refusals: within the 20 client faults that would close her
                for kind in ("chat:typing", "chat:send", "chat:history"):
                    payload = {"conversation_id": cid, "content": "x", "client_id": f"p{cid}{kind}"}
                    reply = await mallory.request(kind, payload)
                    assert reply["payload"]["code"] == "forbidden", reply
            assert h.chat.hub.cached_conversations == 0 and h.chat.hub.cached_members == 0

    run(main())


def test_member_sets_are_bounded_and_dropped_when_nobody_present_needs_them(run: Run, database_url: str) -> None:
    async def main() -> None:
        config = with_chat(member_cache_size=60, presence_grace_s=0)
        async with chat_server(database_url, chat=config) as h:
            rooms = [await group(h, A, B, *(UserId(f"m{r}-{i}") for i in range(30))) for r in range(3)]
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            for room in [*rooms, rooms[0]]:  # the third evicts the first; sending to it loads it again
                await alice.send(room, f"to {room}")
                assert (await bob.expect("chat:message"))["payload"]["message"]["conversation_id"] == room
                assert h.chat.hub.cached_members <= 64  # one set of 32 over the bound at most
            await alice.ws.close()
            await bob.ws.close()
            for _ in range(50):  # the ticker ends the (zero) grace within half a second
                if h.chat.hub.cached_conversations == 0:
                    break
                await asyncio.sleep(0.1)
            assert h.chat.hub.cached_conversations == 0 and h.chat.hub.cached_members == 0

    run(main())


@pytest.mark.parametrize(
    "cursor",
    ["\u00b2.\u00b2", "99999999999999999999999.1", "1.2.3", "", "12", "-1.5", "1.\u0663"],
)
def test_a_malformed_list_cursor_is_a_bad_request(run: Run, database_url: str, cursor: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            reply = await alice.request("conversation:list", {"cursor": cursor})
            assert reply["type"] == "error" and reply["payload"]["code"] == "bad_request", reply

    run(main())


def test_a_members_cursor_longer_than_a_user_id_is_a_bad_request(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            cid = await group(h, A, B, C)
            alice = await h.connect("alice")
            reply = await alice.request("conversation:members", {"conversation_id": cid, "cursor": "x" * 129})
            assert reply["payload"]["code"] == "bad_request"
            page = await alice.ok("conversation:members", {"conversation_id": cid, "cursor": "alice"})
            assert page["members"] == ["bob", "carol"]

    run(main())


class BrokenHistory:
    """A real store whose history reads hit a bug (an exception that is not a store error)."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def history(self, *args: Any) -> Any:
        raise RuntimeError("a bug in the history path")


def test_an_internal_error_is_logged_once_and_counted(
    run: Run, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        real = await open_store(database_url)
        try:
            async with chat_server(database_url, store=BrokenHistory(real)) as h:  # type: ignore[arg-type]
                cid = await group(h, A, B, C)
                alice = await h.connect("alice")
                for _ in range(5):
                    reply = await alice.request("chat:history", {"conversation_id": cid})
                    assert reply["payload"]["code"] == "internal"
                assert h.chat.ctx.internal_errors == 5
        finally:
            await real.close()

    with caplog.at_level(logging.ERROR, logger="sohbet.chat"):
        run(main())
    tracebacks = [r for r in caplog.records if r.exc_info and "history" in r.getMessage()]
    assert len(tracebacks) == 1


def test_a_direct_conversation_asked_for_again_tells_the_one_who_rejoined(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob")
            await bob.expect("conversation:created")
            await bob.ok("conversation:leave", {"conversation_id": cid})
            await alice.expect("conversation:member_removed")
            again = await alice.ok("conversation:create", {"members": ["bob"]})
            assert again["conversation"]["id"] == cid and again["conversation"]["member_count"] == 2
            told = await bob.expect("conversation:created")
            assert told["payload"]["conversation"]["id"] == cid and "ref" not in told
            await alice.send(cid, "welcome back")
            assert (await bob.expect("chat:message"))["payload"]["message"]["content"] == "welcome back"
            # Asked once more with both in: nobody rejoined, so only the asker hears of it.
            await alice.ok("conversation:create", {"members": ["bob"]})
            await alice.send(cid, "marker")
            assert (await bob.recv())["payload"]["message"]["content"] == "marker"

    run(main())


class LosesOneCommitAnswer:
    """A real store whose first append commits and then fails as if the connection died
    during COMMIT: the messages are stored, but the writer hears `unavailable`."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.lost = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(self, batch: Any, now_ms: int) -> Any:
        stored = await self._store.append(batch, now_ms)
        if not self.lost:
            self.lost = True
            raise StoreUnavailable("connection lost during COMMIT")
        return stored


def test_a_retry_after_a_lost_commit_answer_delivers_the_message(run: Run, database_url: str) -> None:
    async def main() -> None:
        real = await open_store(database_url)
        try:
            async with chat_server(database_url, store=LosesOneCommitAnswer(real)) as h:  # type: ignore[arg-type]
                cid = await group(h, A, B, C)
                alice = await h.connect("alice")
                bob = await h.connect("bob")
                payload = {"conversation_id": cid, "content": "once", "client_id": "lost-1"}
                first = await alice.request("chat:send", payload)
                assert first["payload"]["code"] == "unavailable"
                retry = await alice.ok("chat:send", payload)
                assert retry["message"]["seq"] == 1
                delivered = await bob.expect("chat:message")
                assert delivered["payload"]["message"]["client_id"] == "lost-1"
                again = await alice.ok("chat:send", payload)  # a further retry is a plain replay
                assert again["message"]["id"] == retry["message"]["id"]
                await alice.send(cid, "marker")
                assert (await bob.recv())["payload"]["message"]["content"] == "marker"  # not delivered twice
        finally:
            await real.close()

    run(main())


def test_presence_query_sees_only_online_contacts_it_asked_about(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            await group(h, A, B, C)
            await h.store.create_conversation([C, UserId("dave")], None, ConversationKind.DIRECT, 0)
            alice = await h.connect("alice")
            await h.connect("bob")
            await h.connect("dave")  # online, but shares nothing with alice
            online = await alice.ok("presence:query", {"user_ids": ["bob", "carol", "dave", "alice", "bob"]})
            assert online["online"] == ["bob"]  # carol is offline; dave is not her contact
            await h.connect("carol")
            online = await alice.ok("presence:query", {"user_ids": ["carol", "dave"]})
            assert online["online"] == ["carol"]

    run(main())

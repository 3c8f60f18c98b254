"""The chat rules that need no wire, driven through the service with fake sockets and a moving
clock, on a real SQLite store: validation order, rate buckets, idempotency, the typing throttle,
presence grace, token expiry, the error window and the per-user connection limit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sohbet.chat.ids import UserId
from sohbet.chat.wire import RequestType
from sohbet.service import Call, presence
from sohbet.store.sqlite import SqliteStore

from .conftest import FakeOutbox, run, world

# --- validation order: bad_request -> too_large -> forbidden -> rate_limited -------------------


def test_send_validation_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, max_content_chars=10, send_rate_per_s=1.0, send_burst=1) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            mine = await w.conversation(alice, "bob")
            theirs = await w.conversation(bob, "carol")
            long = "x" * 11

            async def code(payload: dict[str, object]) -> str:
                reply = await alice.request("chat:send", payload)
                assert reply["type"] == "error", reply
                return str(reply["payload"]["code"])

            # Malformed beats too large beats not a member.
            assert await code({"conversation_id": theirs, "content": long}) == "bad_request"  # no client_id
            assert await code({"conversation_id": theirs, "content": long, "client_id": "a"}) == "too_large"
            assert await code({"conversation_id": theirs, "content": "hi", "client_id": "b"}) == "forbidden"
            assert await code({"conversation_id": 10**6, "content": "hi", "client_id": "c"}) == "forbidden"
            # Rejected requests spent no token: the one token of the bucket is still there.
            await alice.ok("chat:send", {"conversation_id": mine, "content": "one", "client_id": "d"})
            # Now the bucket is empty, yet a request for someone else's conversation is forbidden.
            assert await code({"conversation_id": theirs, "content": "hi", "client_id": "e"}) == "forbidden"
            assert await code({"conversation_id": mine, "content": "two", "client_id": "f"}) == "rate_limited"

    run(main())


def test_create_validation_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, max_group_members=3) as w:
            alice = w.connect("alice")
            bad = await alice.request("conversation:create", {"members": "bob"})
            assert bad["payload"]["code"] == "bad_request"
            too_many = await alice.request("conversation:create", {"members": ["b", "c", "d", 7]})
            assert too_many["payload"]["code"] == "bad_request"  # a wrong type first, even in a long list
            too_many = await alice.request("conversation:create", {"members": ["b", "c", "d", "e"]})
            assert too_many["payload"]["code"] == "too_large"
            alone = await alice.request("conversation:create", {"members": ["alice"]})
            assert alone["payload"]["code"] == "bad_request"

    run(main())


# --- rate buckets ------------------------------------------------------------------------------


def test_the_send_bucket_is_per_user_and_refills_with_time(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, send_rate_per_s=3.0, send_burst=3) as w:
            phone, laptop = w.connect("alice"), w.connect("alice")
            cid = await w.conversation(phone, "bob")

            def send(client_id: str, on: object = phone) -> object:
                payload = {"conversation_id": cid, "content": client_id, "client_id": client_id}
                return on.request("chat:send", payload)  # type: ignore[attr-defined]  # a Device

            assert [(await send(c))["type"] for c in "abc"] == ["chat:ack"] * 3  # the burst
            limited = await send("d", laptop)  # the other device shares the bucket
            assert limited["payload"]["code"] == "rate_limited"
            assert limited["payload"]["retry_after_ms"] == 334  # a third of a second, rounded up
            w.clock.advance(0.2)
            assert (await send("e"))["payload"]["retry_after_ms"] == 134  # 0.4 tokens to go
            w.clock.advance(0.134)
            assert (await send("f"))["type"] == "chat:ack"
            assert (await send("g"))["payload"]["code"] == "rate_limited"

    run(main())


def test_a_rate_of_zero_turns_the_limit_off(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, send_rate_per_s=0.0, send_burst=1) as w:
            alice = w.connect("alice")
            cid = await w.conversation(alice, "bob")
            for n in range(20):
                await alice.ok("chat:send", {"conversation_id": cid, "content": "x", "client_id": f"k{n}"})

    run(main())


# --- idempotency -------------------------------------------------------------------------------


def test_a_repeated_client_id_returns_the_original_and_delivers_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, send_rate_per_s=1.0, send_burst=1) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            first = await alice.ok("chat:send", {"conversation_id": cid, "content": "hello", "client_id": "same"})
            # The bucket is empty now, and the retry carries other content: it is still a replay.
            again = await alice.ok("chat:send", {"conversation_id": cid, "content": "other", "client_id": "same"})
            assert again["message"] == first["message"]
            assert again["message"]["content"] == "hello"
            # Across conversations too: (sender, client_id) is unique everywhere, forever.
            other = await w.conversation(alice, "carol")
            elsewhere = await alice.ok("chat:send", {"conversation_id": other, "content": "x", "client_id": "same"})
            assert elsewhere["message"] == first["message"]
            # Bob got the message once; a later message is the marker that nothing else came.
            w.clock.advance(1.0)
            await alice.ok("chat:send", {"conversation_id": cid, "content": "marker", "client_id": "next"})
            messages = [m["payload"]["message"]["content"] for m in bob.socket.of_type("chat:message")]
            assert messages == ["hello", "marker"]

    run(main())


def test_replays_spend_no_token(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, send_rate_per_s=1.0, send_burst=2) as w:
            alice = w.connect("alice")
            cid = await w.conversation(alice, "bob")
            await alice.ok("chat:send", {"conversation_id": cid, "content": "a", "client_id": "a"})
            for _ in range(5):
                await alice.ok("chat:send", {"conversation_id": cid, "content": "a", "client_id": "a"})
            # One token was spent on the first send; the second of the burst is still there.
            await alice.ok("chat:send", {"conversation_id": cid, "content": "b", "client_id": "b"})
            limited = await alice.request("chat:send", {"conversation_id": cid, "content": "c", "client_id": "c"})
            assert limited["payload"]["code"] == "rate_limited"

    run(main())


def test_a_replay_answered_from_an_empty_bucket_gives_no_token_back(tmp_path: Path) -> None:
    """Replays the bucket could not pay for are answered from the database, outside any batch:
    they took no token, so they must return none (else each replay would buy a new send)."""

    async def main() -> None:
        async with world(tmp_path, send_rate_per_s=1.0, send_burst=1) as w:
            alice = w.connect("alice")
            cid = await w.conversation(alice, "bob")
            await alice.ok("chat:send", {"conversation_id": cid, "content": "a", "client_id": "a"})
            for _ in range(3):  # the bucket is empty: each is found stored and acked all the same
                await alice.ok("chat:send", {"conversation_id": cid, "content": "a", "client_id": "a"})
            limited = await alice.request("chat:send", {"conversation_id": cid, "content": "b", "client_id": "b"})
            assert limited["payload"]["code"] == "rate_limited"

    run(main())


def test_a_send_before_the_users_conversations_are_loaded_waits_for_them(tmp_path: Path) -> None:
    """A fresh process knows nothing cached: neither the conversation's members nor the user's
    conversations. A send at once after connecting loads what it needs and is acked."""
    path = tmp_path / "service.db"

    async def main() -> None:
        async with world(tmp_path, store=SqliteStore(str(path))) as w:
            cid = await w.conversation(w.connect("bob"), "alice")
        async with world(tmp_path, store=SqliteStore(str(path))) as w:
            alice = w.connect("alice")
            ack = await alice.request("chat:send", {"conversation_id": cid, "content": "hi", "client_id": "c"})
            assert ack["type"] == "chat:ack" and ack["payload"]["message"]["seq"] == 1

    run(main())


# --- typing ------------------------------------------------------------------------------------


def test_typing_is_forwarded_at_most_every_two_seconds_and_not_to_own_devices(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alice, alice_too, bob = w.connect("alice"), w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            for dt in (0.0, 1.0, 0.9, 0.1, 1.99, 0.01):  # at 0, 1, 1.9, 2.0, 3.99, 4.0 s
                w.clock.advance(dt)
                alice.send("chat:typing", {"conversation_id": cid})
            await w.settle()
            await alice.ok("chat:send", {"conversation_id": cid, "content": "marker", "client_id": "m"})
            await bob.socket.wait_for("chat:message")
            kinds = [m["type"] for m in bob.socket.sent if m["type"] in {"chat:typing", "chat:message"}]
            assert kinds == ["chat:typing"] * 3 + ["chat:message"]  # at 0, 2.0 and 4.0 s
            notice = bob.socket.of_type("chat:typing")[0]["payload"]
            assert notice == {"conversation_id": cid, "user_id": "alice", "expires_in_ms": 6000}
            assert alice_too.socket.of_type("chat:typing") == []
            assert alice.socket.of_type("error") == []  # typing has no reply unless it fails

    run(main())


def test_typing_into_someone_elses_conversation_is_forbidden(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            theirs = await w.conversation(bob, "carol")
            reply = await alice.request("chat:typing", {"conversation_id": theirs})
            assert reply["payload"]["code"] == "forbidden"

    run(main())


# --- presence grace ----------------------------------------------------------------------------


def test_offline_is_announced_only_when_the_grace_period_ends(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, presence_grace_s=10.0) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            await w.conversation(alice, "bob")
            alice.disconnect()
            w.service.tick(w.clock.wall(), w.clock.now() + 9.99)
            still = await bob.ok("presence:query", {"user_ids": ["alice"]})
            assert still == {"online": ["alice"]}  # in the grace period she counts as online
            w.service.tick(w.clock.wall(), w.clock.now() + 10.0)
            assert [m["payload"] for m in bob.socket.of_type("user:offline")] == [{"user_id": "alice"}]
            gone = await bob.ok("presence:query", {"user_ids": ["alice"]})
            assert gone == {"online": []}

    run(main())


def test_a_reconnect_within_the_grace_period_announces_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, presence_grace_s=10.0) as w:
            first, bob = w.connect("alice"), w.connect("bob")
            await w.conversation(first, "bob")
            first.disconnect()
            w.service.tick(w.clock.wall(), w.clock.now() + 10.0)  # alice is offline now
            alice = w.connect("alice")
            await w.settle()
            assert [m["payload"] for m in bob.socket.of_type("user:online")] == [{"user_id": "alice"}]
            online_before = 1
            alice.disconnect()
            w.clock.advance(5.0)
            again = w.connect("alice")
            await w.settle()
            w.service.tick(w.clock.wall(), w.clock.now() + 60.0)
            # The marker: once alice's last connection goes and its grace ends, bob hears it.
            again.disconnect()
            w.service.tick(w.clock.wall(), w.clock.now() + 70.0 + 10.0)
            assert len(bob.socket.of_type("user:online")) == online_before
            presence = [m["type"] for m in bob.socket.sent if m["type"].startswith("user:")]
            assert presence == ["user:offline", "user:online", "user:offline"]

    run(main())


def test_presence_is_visible_only_to_contacts(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            await w.conversation(alice, "bob")
            carol = w.connect("carol")
            await w.settle()
            seen = await carol.ok("presence:query", {"user_ids": ["alice", "bob", "carol"]})
            assert seen == {"online": []}
            assert await alice.ok("presence:query", {"user_ids": ["bob", "carol", "bob"]}) == {"online": ["bob"]}
            await bob.ok("presence:query", {"user_ids": []})  # the marker: what came before it is all
            assert carol.socket.of_type("user:online") == []
            assert [m["payload"]["user_id"] for m in bob.socket.of_type("user:online")] == []

    run(main())


# --- tokens, errors, connections ---------------------------------------------------------------


def test_an_expired_token_closes_with_4001_unless_refreshed(tmp_path: Path) -> None:
    async def main() -> None:
        from sohbet.auth import issue_token  # noqa: PLC0415  # only this test signs tokens

        from .conftest import AUTH  # noqa: PLC0415

        async with world(tmp_path) as w:
            short, refreshed = w.connect("alice", ttl_s=30), w.connect("alice", ttl_s=30)
            token = issue_token(AUTH, "alice", 3600, w.clock.wall())
            reply = await refreshed.ok("auth:refresh", {"token": token})
            assert reply["exp"] == int(w.clock.wall() + 3600)
            someone_else = issue_token(AUTH, "mallory", 3600, w.clock.wall())
            refused = await short.request("auth:refresh", {"token": someone_else})
            assert refused["payload"]["code"] == "unauthorized"
            w.service.tick(w.clock.wall() + 29.0, w.clock.now())
            assert short.socket.closed_with is None
            w.service.tick(w.clock.wall() + 31.0, w.clock.now())
            assert short.socket.closed_with == (4001, "token expired")
            assert refreshed.socket.closed_with is None

    run(main())


def test_more_than_the_allowed_client_faults_in_ten_seconds_close_with_1008(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, max_errors_per_10s=3) as w:
            slow, fast = w.connect("alice"), w.connect("bob")
            for _ in range(6):  # one every 4 s: never more than 3 in a window
                slow.send("nope")
                w.clock.advance(4.0)
            assert slow.socket.closed_with is None
            for _ in range(3):
                fast.send("nope")
            assert fast.socket.closed_with is None
            fast.send("nope")
            assert fast.socket.closed_with == (1008, "more than 3 errors in 10 s")
            assert len(fast.socket.of_type("error")) == 4  # the fourth is still answered

    run(main())


def test_the_eleventh_connection_of_a_user_is_refused_and_the_others_stay(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, max_connections_per_user=2) as w:
            first, second, third = w.connect("alice"), w.connect("alice"), w.connect("alice")
            assert third.session is None
            assert third.socket.closed_with == (1008, "more than 2 connections for this user")
            assert third.socket.sent == []  # no hello
            assert first.socket.closed_with is None and second.socket.closed_with is None
            first.disconnect()
            assert w.connect("alice").session is not None

    run(main())


def test_coming_online_is_announced_once_to_contacts_and_not_to_ones_own_devices(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            first, bob = w.connect("alice"), w.connect("bob")
            await w.conversation(first, "bob")
            first.disconnect()
            w.service.tick(w.clock.wall(), w.clock.now() + 10.0)
            phone = w.connect("alice")
            laptop = w.connect("alice")  # already online: no second announcement
            await w.settle()
            await bob.ok("presence:query", {"user_ids": []})  # the marker
            assert [m["payload"] for m in bob.socket.of_type("user:online")] == [{"user_id": "alice"}]
            assert phone.socket.of_type("user:online") == laptop.socket.of_type("user:online") == []

    run(main())


# --- fan-out -----------------------------------------------------------------------------------


def test_a_message_reaches_every_member_and_the_senders_other_devices_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            phone, laptop = w.connect("alice"), w.connect("alice")
            bob, carol, dave = w.connect("bob"), w.connect("carol"), w.connect("dave")
            cid = await w.conversation(phone, "bob", "carol", title="trio")
            ack = await phone.ok("chat:send", {"conversation_id": cid, "content": "hi all", "client_id": "x"})
            for device in (laptop, bob, carol):
                got = await device.socket.wait_for("chat:message")
                assert got["payload"]["message"] == ack["message"]
                assert "ref" not in got  # events carry no ref
            # The marker: a later message to dave's own conversation; before it, nothing of the trio.
            other = await w.conversation(bob, "dave")
            await bob.ok("chat:send", {"conversation_id": other, "content": "marker", "client_id": "y"})
            await dave.socket.wait_for("chat:message")
            assert [m["payload"]["message"]["content"] for m in dave.socket.of_type("chat:message")] == ["marker"]
            assert phone.socket.of_type("chat:message") == []  # the sender's own connection: the ack only

    run(main())


def test_a_message_sent_without_a_socket_reaches_a_members_only_connection(tmp_path: Path) -> None:
    """An HTTP API send has no connection of its own to skip: the one connection of the one
    connected member gets the message (a fan-out list of a single connection, not the sender's)."""

    async def main() -> None:
        async with world(tmp_path) as w:
            bob = w.connect("bob")
            cid = await w.conversation(bob, "alice")  # alice has no connection
            payload = {"conversation_id": cid, "content": "from the api", "client_id": "api-1"}
            reply = await w.service.request(Call(UserId("alice")), RequestType.SEND, payload)
            got = await bob.socket.wait_for("chat:message")
            assert got["payload"]["message"] == reply["message"]

    run(main())


def test_a_read_receipt_goes_out_only_when_the_position_moves(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            for n in range(3):
                await alice.ok("chat:send", {"conversation_id": cid, "content": f"m{n}", "client_id": f"k{n}"})
            bob.send("chat:read", {"conversation_id": cid, "seq": 2})
            bob.send("chat:read", {"conversation_id": cid, "seq": 1})  # backwards: nothing
            bob.send("chat:read", {"conversation_id": cid, "seq": 99})  # clamped to the last seq, 3
            bob.send("chat:read", {"conversation_id": cid, "seq": 3})  # already there: nothing
            await w.settle()
            await alice.ok("presence:query", {"user_ids": []})  # the marker
            receipts = [m["payload"]["seq"] for m in alice.socket.of_type("chat:read")]
            assert receipts == [2, 3]
            assert bob.socket.of_type("chat:read") == [] and bob.socket.of_type("error") == []

    run(main())


def test_a_direct_conversation_asked_for_again_readmits_a_member_who_left(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path) as w:
            alice, bob = w.connect("alice"), w.connect("bob")
            cid = await w.conversation(alice, "bob")
            await bob.ok("conversation:leave", {"conversation_id": cid})
            refused = await bob.request("chat:send", {"conversation_id": cid, "content": "x", "client_id": "a"})
            assert refused["payload"]["code"] == "forbidden"
            again = await alice.ok("conversation:create", {"members": ["bob"]})
            assert again["conversation"]["id"] == cid
            await bob.ok("chat:send", {"conversation_id": cid, "content": "back", "client_id": "b"})

    run(main())


def test_the_token_leeway_delays_the_4001(tmp_path: Path) -> None:
    async def main() -> None:
        async with world(tmp_path, leeway_s=5.0) as w:
            alice = w.connect("alice", ttl_s=30)
            w.service.tick(w.clock.wall() + 34.0, w.clock.now())
            assert alice.socket.closed_with is None
            w.service.tick(w.clock.wall() + 35.0, w.clock.now())
            assert alice.socket.closed_with == (4001, "token expired")

    run(main())


def test_a_request_type_with_two_handlers_is_refused(tmp_path: Path) -> None:
    from sohbet.chat.wire import RequestType  # noqa: PLC0415
    from sohbet.service.sync import Sync  # noqa: PLC0415

    async def main() -> None:
        async with world(tmp_path) as w:
            original = Sync.handlers

            def twice(self: Sync) -> dict[RequestType, object]:
                return {**original(self), RequestType.SEND: lambda s, e: None}

            Sync.handlers = twice  # type: ignore[assignment,method-assign]  # a family claiming chat:send too
            try:
                with pytest.raises(ValueError, match="chat:send has two handlers"):
                    type(w.service)(w.service.store, w.service.ctx.config, w.service.verifier, FakeOutbox(),
                                    max_message_bytes=65536, leeway_s=0.0)  # fmt: skip
            finally:
                Sync.handlers = original  # type: ignore[method-assign]  # restored

    run(main())


def test_a_mass_departure_is_announced_over_several_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One tick makes a bounded number of `user:offline` deliveries; the rest come at the next
    ticks, each user's exactly once, and every one of them is forgotten in the end."""
    monkeypatch.setattr(presence, "OFFLINE_DELIVERIES_PER_TICK", 3)

    async def main() -> None:
        async with world(tmp_path, presence_grace_s=10.0) as w:
            watchers = [w.connect(f"w{i}") for i in range(2)]
            leavers = [w.connect(f"l{i}") for i in range(4)]
            await w.conversation(leavers[0], "w0", "w1", "l1", "l2", "l3")
            for leaver in leavers:
                leaver.disconnect()
            later = w.clock.now() + 10.0
            told: list[list[str]] = []
            for _ in range(3):
                w.service.tick(w.clock.wall(), later)
                told.append([m["payload"]["user_id"] for m in watchers[0].socket.of_type("user:offline")])
            # 2 deliveries per leaver: two ticks of budget 3 announce 2 leavers each.
            assert [len(t) for t in told] == [2, 4, 4]
            assert sorted(told[-1]) == ["l0", "l1", "l2", "l3"]
            assert [m["payload"]["user_id"] for m in watchers[1].socket.of_type("user:offline")] == told[-1]
            gone = await watchers[1].ok("presence:query", {"user_ids": ["l0", "l1", "l2", "l3"]})
            assert gone == {"online": []}
            assert w.service.ctx.hub.conversations(UserId("l3")) is None  # forgotten

    run(main())


def test_an_admission_cancelled_before_it_ran_is_uncounted(tmp_path: Path) -> None:
    """`ChatService.stop` cancels the service's tasks, some before their first step: their
    connections must stop counting as being admitted all the same."""

    async def main() -> None:
        async with world(tmp_path) as w:
            w.connect("alice")  # her conversations are not loaded: she is being admitted
            assert w.service.admitting == 1
            for task in list(w.service.ctx.tasks):
                task.cancel()  # in the same loop turn: none of them has started
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert w.service.admitting == 0

    run(main())


def test_offline_announcements_put_off_keep_their_place_in_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users whose `user:offline` waited for a later tick go first at that tick, ahead of those
    whose grace ended since: a steady stream of departures must not keep them online forever."""
    monkeypatch.setattr(presence, "OFFLINE_DELIVERIES_PER_TICK", 3)

    async def main() -> None:
        async with world(tmp_path, presence_grace_s=10.0) as w:
            watcher, other = w.connect("w0"), w.connect("w1")
            leavers = [w.connect(f"l{i}") for i in range(4)]
            late = w.connect("late")
            await w.conversation(leavers[0], "w0", "w1", "l1", "l2", "l3", "late")
            start = w.clock.now()
            for leaver in leavers:
                leaver.disconnect()
            w.clock.advance(1.0)
            late.disconnect()
            w.service.tick(w.clock.wall(), start + 10.0)  # l0, l1 told; l2, l3 put off
            w.service.tick(w.clock.wall(), start + 11.0)  # late's grace has ended too
            w.service.tick(w.clock.wall(), start + 11.5)
            told = [m["payload"]["user_id"] for m in watcher.socket.of_type("user:offline")]
            assert told == ["l0", "l1", "l2", "l3", "late"]
            assert [m["payload"]["user_id"] for m in other.socket.of_type("user:offline")] == told

    run(main())

"""The HTTP API over real sockets (docs/protocol.md, "HTTP API"): every endpoint for both callers,
every way authentication fails, bad and oversize bodies, and what its changes do to open
WebSocket connections.

The server is the one `sohbet-server` runs (`App`, through `chat_server`), on SQLite and on
Postgres; HTTP goes through aiohttp's client, WebSocket through the `websockets` library, so no
code of sohbet's stands on the client side. A "must not receive" check waits for a later event
the same connection must receive (a marker) and asserts what came before it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pytest

from sohbet.chat.hub import FANOUT_CACHE_MIN
from sohbet.config import AuthConfig
from sohbet.store import MessageStore
from sohbet.ws.config import Limits

from ..chatkit import API_KEY, AUTH, SECRET, Harness, HeldRemovals, WsChat, chat_server, open_store, token, with_chat

Run = Callable[[Coroutine[Any, Any, Any]], Any]
BACKEND = {"Authorization": f"Bearer {API_KEY}"}


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


class Api:
    """An HTTP client of one harness: each call returns the status, the JSON body (or None) and
    the headers."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        async with self.session.request(method, path, headers=headers or {}, **kwargs) as r:
            body = await r.read()
            return r.status, (await r.json(content_type=None) if body else None), r.headers

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        got, body, _ = await self.call(method, path, **kwargs)
        assert got == status, (got, body)
        return body


@asynccontextmanager
async def api_of(h: Harness) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{h.server.port}") as session:
        yield Api(session)


async def marker(api: Api, *clients: WsChat) -> list[list[dict[str, Any]]]:
    """Publish an `app:marker` to the clients' users and wait for it on each; return, for each
    client, what it received before the marker. What a test says must not arrive would be there:
    one connection's events arrive in the order they were sent."""
    users = sorted({c.user for c in clients})
    await api.ok("POST", "/api/publish", json={"user_ids": users, "type": "app:marker", "payload": {}}, headers=BACKEND)
    before = []
    for client in clients:
        seen = []
        while (event := await client.recv())["type"] != "app:marker":
            seen.append(event)
        before.append(seen)
    return before


def nested(depth: int) -> dict[str, Any]:
    inner: dict[str, Any] = {}
    for _ in range(depth):
        inner = {"a": inner}
    return inner


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def group(api: Api, *members: str, title: str = "g") -> int:
    body = await api.ok(
        "POST", "/api/conversations", 201, json={"members": list(members), "title": title}, headers=BACKEND
    )
    return int(body["conversation"]["id"])


def test_the_backend_creates_sends_and_every_member_connection_receives(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            alice1, alice2, bob = await h.connect("alice"), await h.connect("alice"), await h.connect("bob")
            created = await api.ok(
                "POST", "/api/conversations", 201, json={"members": ["alice", "bob", "carol"], "title": "plans"},
                headers=BACKEND,
            )  # fmt: skip
            conversation = created["conversation"]
            assert conversation["kind"] == "group" and conversation["members"] == ["alice", "bob", "carol"]
            for client in (alice1, alice2, bob):  # no creator is added, and nobody is skipped
                assert (await client.expect("conversation:created"))["payload"] == created
            cid = conversation["id"]
            body = {"sender_id": "alice", "content": "from the backend", "client_id": "b1"}
            sent = await api.ok("POST", f"/api/conversations/{cid}/messages", 201, json=body, headers=BACKEND)
            message = sent["message"]
            assert (message["seq"], message["sender_id"], message["client_id"]) == (1, "alice", "b1")
            stored, _ = await h.store.history(cid, None, 10)
            assert [m.content for m in stored] == ["from the backend"]  # acked means stored
            for client in (alice1, alice2, bob):  # the sender's own connections too: none asked
                assert (await client.expect("chat:message"))["payload"] == {"message": message}
            again = {**body, "content": "different"}
            repeat = await api.ok("POST", f"/api/conversations/{cid}/messages", 200, json=again, headers=BACKEND)
            assert repeat == {"message": message}  # the original, stored once
            for seen in await marker(api, alice1, alice2, bob):  # and delivered once
                assert "chat:message" not in kinds(seen)

    run(main())


def test_a_users_rest_send_is_their_chat_send(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            bob_phone, alice = await h.connect("bob"), await h.connect("alice")
            path = f"/api/conversations/{cid}/messages"
            sent = await api.ok("POST", path, 201, json={"content": "hi", "client_id": "r1"}, headers=as_user("bob"))
            message = sent["message"]
            assert message["sender_id"] == "bob" and message["content"] == "hi"
            for client in (bob_phone, alice):  # bob's other device gets it: the REST call has no socket
                assert (await client.expect("chat:message"))["payload"] == {"message": message}
            repeat = await api.ok("POST", path, 200, json={"content": "x", "client_id": "r1"}, headers=as_user("bob"))
            assert repeat == sent
            # The same client_id over the WebSocket is the same message: one idempotency key.
            ack = await bob_phone.ok("chat:send", {"conversation_id": cid, "content": "y", "client_id": "r1"})
            assert ack["message"] == message
            # Without a client_id each call is a new message.
            first = await api.ok("POST", path, 201, json={"content": "a"}, headers=as_user("bob"))
            second = await api.ok("POST", path, 201, json={"content": "a"}, headers=as_user("bob"))
            assert (first["message"]["seq"], second["message"]["seq"]) == (2, 3)
            assert first["message"]["client_id"] != second["message"]["client_id"]
            status, error, _ = await api.call(
                "POST", path, json={"content": "a", "sender_id": "alice"}, headers=as_user("bob")
            )
            assert (status, error["error"]["code"]) == (400, "bad_request")  # only the backend names a sender
            for seen in await marker(api, bob_phone, alice):  # the two new ones, and nothing of "r1" again
                assert [e["payload"]["message"]["seq"] for e in seen if e["type"] == "chat:message"] == [2, 3]

    run(main())


def test_membership_and_validation_answers_match_the_websocket(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            path = f"/api/conversations/{cid}/messages"
            dave = as_user("dave")
            foreign = await api.call("POST", path, json={"content": "x", "client_id": "d1"}, headers=dave)
            missing = await api.call(
                "POST", "/api/conversations/999999/messages", json={"content": "x", "client_id": "d2"}, headers=dave
            )
            # A conversation that does not exist and one that is not yours: the same answer.
            assert foreign[0] == missing[0] == 403
            assert foreign[1]["error"]["code"] == missing[1]["error"]["code"] == "forbidden"
            assert (await api.call("GET", path, headers=dave))[0] == 403
            # The order of the checks: bad_request, then too_large, then forbidden.
            assert (await api.call("POST", path, json={"client_id": "d3"}, headers=dave))[0] == 400
            long = {"content": "x" * 4001, "client_id": "d4"}
            assert (await api.call("POST", path, json=long, headers=dave))[1]["error"]["code"] == "too_large"
            assert (await api.call("POST", path, json=long, headers=dave))[0] == 413
            # The backend may know what exists: 404 for a missing conversation, 403 for a stranger.
            body = {"sender_id": "dave", "content": "x", "client_id": "d5"}
            assert (await api.call("POST", path, json=body, headers=BACKEND))[0] == 403
            status, error, _ = await api.call("POST", "/api/conversations/999999/messages", json=body, headers=BACKEND)
            assert (status, error["error"]["code"]) == (404, "not_found")
            assert (await api.call("POST", path, json={"content": "x"}, headers=BACKEND))[0] == 400  # no sender
            stored, _ = await h.store.history(cid, None, 10)
            assert stored == []

    run(main())


def test_rest_sends_spend_the_users_bucket_and_the_backends_spend_none(run: Run, database_url: str) -> None:
    async def main() -> None:
        config = with_chat(send_rate_per_s=0.01, send_burst=2)
        async with chat_server(database_url, chat=config) as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            alice = await h.connect("alice")
            await alice.send(cid, "one")
            path = f"/api/conversations/{cid}/messages"
            await api.ok("POST", path, 201, json={"content": "two"}, headers=as_user("alice"))
            status, body, headers = await api.call("POST", path, json={"content": "three"}, headers=as_user("alice"))
            assert (status, body["error"]["code"]) == (429, "rate_limited")
            wait_ms = body["error"]["retry_after_ms"]
            assert 90_000 <= wait_ms <= 100_000  # a token every 100 s
            assert int(headers["Retry-After"]) == -(-wait_ms // 1000)
            # Her bucket is the same over the WebSocket ...
            reply = await alice.request("chat:send", {"conversation_id": cid, "content": "4", "client_id": "w4"})
            assert reply["payload"]["code"] == "rate_limited"
            # ... and the backend acting for her is not held to it.
            for n in range(3):
                body = {"sender_id": "alice", "content": f"system {n}"}
                await api.ok("POST", path, 201, json=body, headers=BACKEND)

    run(main())


def test_history_for_users_and_the_backend(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            path = f"/api/conversations/{cid}/messages"
            for n in range(5):
                await api.ok("POST", path, 201, json={"sender_id": "bob", "content": f"m{n}"}, headers=BACKEND)
            page = await api.ok("GET", f"{path}?limit=2", headers=as_user("alice"))
            assert [m["content"] for m in page["messages"]] == ["m3", "m4"] and page["has_more"] is True
            older = await api.ok("GET", f"{path}?before_seq=2&limit=50", headers=as_user("alice"))
            assert [m["content"] for m in older["messages"]] == ["m0"] and older["has_more"] is False
            assert set(page) == {"messages", "has_more"}
            whole = await api.ok("GET", path, headers=BACKEND)
            assert [m["seq"] for m in whole["messages"]] == [1, 2, 3, 4, 5]
            status, body, _ = await api.call("GET", "/api/conversations/424242/messages", headers=BACKEND)
            assert (status, body["error"]["code"]) == (404, "not_found")
            empty = {"messages": [], "has_more": False}
            for caller in (as_user("alice"), BACKEND):  # 0 is below every seq: an empty page, not "absent"
                assert await api.ok("GET", f"{path}?before_seq=0", headers=caller) == empty
            for query in ("limit=abc", "limit=0", "limit=101", "limit=1&limit=2", "before_seq=-1", "before_seq=1.0"):
                for caller in (as_user("alice"), BACKEND):
                    status, body, _ = await api.call("GET", f"{path}?{query}", headers=caller)
                    assert (status, body["error"]["code"]) == (400, "bad_request"), query

    run(main())


def test_the_conversation_list_is_the_users(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            first = await group(api, "alice", "bob", "carol", title="first")
            second = await group(api, "alice", "dave", "erin", title="second")
            # Activity is kept in milliseconds: the message must come in a later one than the
            # second group's creation to rank first (within one, the newer conversation does).
            await asyncio.sleep(0.002)
            await api.ok(
                "POST", f"/api/conversations/{first}/messages", 201, json={"sender_id": "bob", "content": "x"},
                headers=BACKEND,
            )  # fmt: skip
            listed = await api.ok("GET", "/api/conversations", headers=as_user("alice"))
            assert [(c["id"], c["unread"]) for c in listed["conversations"]] == [(first, 1), (second, 0)]
            paged = await api.ok("GET", "/api/conversations?limit=1", headers=as_user("alice"))
            assert [c["id"] for c in paged["conversations"]] == [first]
            rest = await api.ok(
                "GET", "/api/conversations", params={"cursor": paged["next_cursor"]}, headers=as_user("alice")
            )
            assert [c["id"] for c in rest["conversations"]] == [second] and rest["next_cursor"] is None
            status, body, _ = await api.call("GET", "/api/conversations?cursor=nope", headers=as_user("alice"))
            assert (status, body["error"]["code"]) == (400, "bad_request")
            status, body, _ = await api.call("GET", "/api/conversations", headers=BACKEND)
            assert (status, body["error"]["code"]) == (403, "forbidden")  # the key is nobody's

    run(main())


def test_a_user_creates_as_over_the_websocket(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            bob = await h.connect("bob")
            created = await api.ok(
                "POST", "/api/conversations", 201, json={"members": ["bob", "bob"]}, headers=as_user("alice")
            )  # the creator is added, duplicates are dropped: a direct conversation
            conversation = created["conversation"]
            assert conversation["kind"] == "direct" and conversation["members"] == ["alice", "bob"]
            assert (await bob.expect("conversation:created"))["payload"] == created
            again = await api.ok("POST", "/api/conversations", 201, json={"members": ["bob"]}, headers=as_user("alice"))
            assert again["conversation"]["id"] == conversation["id"]  # direct: one per pair
            for bad in ({}, {"members": "bob"}, {"members": []}, {"members": ["alice"]}):
                status, body, _ = await api.call("POST", "/api/conversations", json=bad, headers=as_user("alice"))
                assert (status, body["error"]["code"]) == (400, "bad_request"), bad
            status, body, _ = await api.call("POST", "/api/conversations", json={"members": ["x"]}, headers=BACKEND)
            assert status == 400  # the backend adds nobody: one member is not a conversation
            assert kinds((await marker(api, bob))[0]) == []  # the repeat told bob nothing

    run(main())


def test_a_large_groups_kept_recipients_follow_every_change(run: Run, database_url: str) -> None:
    """From `FANOUT_CACHE_MIN` connections on, a group's recipients are kept between messages
    (`Hub.member_connections`). Every change between two messages must show in the next one:
    a leave, a removal, an addition, a second device; a closed connection is skipped in any case,
    and must not stay held once everyone has gone."""
    others = [f"u{i:02}" for i in range(FANOUT_CACHE_MIN + 2)]

    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            cid = await group(api, "alice", *others)
            alice = await h.connect("alice")
            conns = {user: await h.connect(user) for user in others}
            dave = await h.connect("dave")  # not a member yet
            sent = 0

            async def round_trip(receivers: list[WsChat], silent: list[WsChat]) -> None:
                nonlocal sent
                sent += 1
                content = f"m{sent}"
                await alice.send(cid, content)
                for client in receivers:  # each exactly once, nothing else of the group before
                    got = await client.expect("chat:message")
                    assert got["payload"]["message"]["content"] == content, client.user
                for before in await marker(api, *silent):
                    assert "chat:message" not in kinds(before)

            await round_trip(list(conns.values()), [dave])
            assert h.app.chat.hub.sizes()["hub_fanout_lists"] == 1  # kept: the path under test
            leaver = conns.pop("u00")
            await leaver.ok("conversation:leave", {"conversation_id": cid})
            await round_trip(list(conns.values()), [leaver, dave])
            removed = conns.pop("u01")
            await api.ok("DELETE", f"/api/conversations/{cid}/members/u01", 204, headers=BACKEND)
            await round_trip(list(conns.values()), [removed, leaver, dave])
            await api.ok("POST", f"/api/conversations/{cid}/members", json={"user_id": "dave"}, headers=BACKEND)
            await round_trip([*conns.values(), dave], [removed, leaver])
            phone = await h.connect("u02")
            await round_trip([*conns.values(), dave, phone], [removed, leaver])
            await conns.pop("u03").ws.close()
            await phone.ws.close()
            await round_trip([*conns.values(), dave], [removed, leaver])
            hub = h.app.chat.hub
            assert hub.sizes()["hub_fanout_entries"] == len(conns) + 2  # kept again, alice and dave in it
        # Every connection has closed (the harness checks): no kept list holds a closed socket.
        assert hub.sizes()["hub_fanout_lists"] == hub.sizes()["hub_fanout_entries"] == 0

    run(main())


def test_an_added_member_receives_at_once(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            dave, alice = await h.connect("dave"), await h.connect("alice")
            path = f"/api/conversations/{cid}/members"
            added = await api.ok("POST", path, json={"user_id": "dave"}, headers=BACKEND)
            assert added["conversation"]["member_count"] == 4 and "dave" in added["conversation"]["members"]
            notice = {"conversation_id": cid, "user_id": "dave"}
            for client in (dave, alice):
                assert (await client.expect("conversation:member_added"))["payload"] == notice
            sent = await alice.send(cid, "welcome dave")
            assert (await dave.expect("chat:message"))["payload"]["message"] == sent
            await dave.send(cid, "thanks")  # and may send: a member now, on his open connection
            again = await api.ok("POST", path, json={"user_id": "dave"}, headers=BACKEND)
            assert again["conversation"]["member_count"] == 4
            for seen in await marker(api, dave, alice):  # adding him again told nobody anything
                assert "conversation:member_added" not in kinds(seen)
            direct = await api.ok("POST", "/api/conversations", 201, json={"members": ["x", "y"]}, headers=BACKEND)
            status, body, _ = await api.call(
                "POST", f"/api/conversations/{direct['conversation']['id']}/members", json={"user_id": "z"},
                headers=BACKEND,
            )  # fmt: skip
            assert (status, body["error"]["code"]) == (400, "bad_request")
            status, body, _ = await api.call("POST", "/api/conversations/777777/members", json={"user_id": "z"},
                                             headers=BACKEND)  # fmt: skip
            assert (status, body["error"]["code"]) == (404, "not_found")
            for bad in ({}, {"user_id": ""}, {"user_id": 7}, {"user_id": "x" * 129}):
                assert (await api.call("POST", path, json=bad, headers=BACKEND))[0] == 400, bad
            full = await group(api, "a", "b", "c")
            async with api_of(h) as same:
                h.chat.ctx.config = with_chat(max_group_members=3)  # the group is full now
                path3 = f"/api/conversations/{full}/members"
                status, body, _ = await same.call("POST", path3, json={"user_id": "d"}, headers=BACKEND)
                assert (status, body["error"]["code"]) == (413, "too_large")
                again3 = await same.ok("POST", path3, json={"user_id": "a"}, headers=BACKEND)
                assert again3["conversation"]["member_count"] == 3  # already in: 200, full or not
            assert (await api.call("POST", path, json={"user_id": "e"}, headers=as_user("alice")))[0] == 403

    run(main())


def test_a_removed_member_stops_receiving_at_once(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            bob1, bob2, alice = await h.connect("bob"), await h.connect("bob"), await h.connect("alice")
            assert (await api.call("DELETE", f"/api/conversations/{cid}/members/bob", headers=BACKEND))[0] == 204
            notice = {"conversation_id": cid, "user_id": "bob"}
            for client in (bob1, bob2, alice):  # the user concerned, on every connection, and the others
                assert (await client.expect("conversation:member_removed"))["payload"] == notice
            await alice.send(cid, "after bob left")
            await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": cid}})  # no reply
            for seen in await marker(api, bob1, bob2):  # neither the message nor the typing reached bob
                assert not {"chat:message", "chat:typing"} & set(kinds(seen)), seen
            reply = await bob1.request("chat:send", {"conversation_id": cid, "content": "x", "client_id": "late"})
            assert reply["payload"]["code"] == "forbidden"
            assert (await api.call("GET", f"/api/conversations/{cid}/messages", headers=as_user("bob")))[0] == 403
            status, body, _ = await api.call("DELETE", f"/api/conversations/{cid}/members/bob", headers=BACKEND)
            assert (status, body["error"]["code"]) == (404, "not_found")  # no longer a member
            status, _, _ = await api.call("DELETE", "/api/conversations/888888/members/bob", headers=BACKEND)
            assert status == 404
            status, _, _ = await api.call("DELETE", f"/api/conversations/{cid}/members/alice", headers=as_user("alice"))
            assert status == 403

    run(main())


def test_publish_and_broadcast_reach_the_right_connections(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            alice1, alice2, bob, carol = [await h.connect(u) for u in ("alice", "alice", "bob", "carol")]
            bare = {"user_ids": ["bob"], "type": "app:bare", "payload": None}
            assert await api.ok("POST", "/api/publish", json=bare, headers=BACKEND) == {"delivered_connections": 1}
            assert await bob.recv() == {"type": "app:bare", "payload": {}}  # null is an empty payload
            body = {"user_ids": ["alice", "nobody-online"], "type": "app:notice", "payload": {"n": 1}}
            assert await api.ok("POST", "/api/publish", json=body, headers=BACKEND) == {"delivered_connections": 2}
            for client in (alice1, alice2):
                got = await client.recv()
                assert got == {"type": "app:notice", "payload": {"n": 1}}  # no ref: an event
            for seen in await marker(api, bob, carol):  # the notice reached neither
                assert "app:notice" not in kinds(seen)
            everyone = {"type": "app:announcement", "payload": {"text": "maintenance at 5"}}
            assert await api.ok("POST", "/api/broadcast", json=everyone, headers=BACKEND) == {
                "delivered_connections": 4
            }
            for client in (alice1, alice2, bob, carol):
                assert await client.recv() == everyone
            refusals = [
                ({"user_ids": ["bob"], "type": "chat:message", "payload": {}}, 400),  # no forged chat events
                ({"user_ids": ["bob"], "type": "app:", "payload": {}}, 400),
                ({"user_ids": ["bob"], "type": "app:x\n", "payload": {}}, 400),
                ({"user_ids": ["bob"], "type": "app:" + "x" * 61, "payload": {}}, 400),
                ({"user_ids": ["bob"], "type": "app:x", "payload": []}, 400),
                ({"user_ids": "bob", "type": "app:x"}, 400),
                ({"type": "app:x"}, 400),
                ({"user_ids": ["bob"], "type": "app:x", "payload": {"blob": "x" * 70_000}}, 413),
                ({"user_ids": ["bob"], "type": "app:x", "payload": nested(300)}, 400),  # orjson reads it, not writes
                ({"user_ids": ["b\ud800"], "type": "app:x", "payload": {}}, 400),  # no UTF-8: not a user id
            ]
            for refused, status in refusals:
                got, error, _ = await api.call("POST", "/api/publish", json=refused, headers=BACKEND)
                assert got == status, (refused, error)
            assert (await api.call("POST", "/api/broadcast", json={"type": "sync:done"}, headers=BACKEND))[0] == 400
            assert (await api.call("POST", "/api/publish", json=body, headers=as_user("bob")))[0] == 403
            for seen in await marker(api, alice1, alice2, bob, carol):  # none of the refused ones went out
                assert seen == []

    run(main())


def test_presence_of_a_user_and_the_online_pages(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(presence_grace_s=3600)) as h, api_of(h) as api:
            for user in ("ann", "ann", "ben", "cem"):
                await h.connect(user)
            assert await api.ok("GET", "/api/users/ann/presence", headers=BACKEND) == {
                "user_id": "ann", "online": True, "connections": 2,
            }  # fmt: skip
            assert await api.ok("GET", "/api/users/zed/presence", headers=BACKEND) == {
                "user_id": "zed", "online": False, "connections": 0,
            }  # fmt: skip
            first = await api.ok("GET", "/api/presence?limit=2", headers=BACKEND)
            assert first == {"online": ["ann", "ben"], "next_cursor": "ben"}
            rest = await api.ok("GET", "/api/presence", params={"cursor": "ben", "limit": "2"}, headers=BACKEND)
            assert rest == {"online": ["cem"], "next_cursor": None}
            ben = next(c for c in h.clients if c.user == "ben")
            await ben.ws.close()
            # In the grace period ben is still online, with no connection.
            async with asyncio.timeout(5):
                while (await api.ok("GET", "/api/users/ben/presence", headers=BACKEND))["connections"]:
                    await asyncio.sleep(0.01)
            assert (await api.ok("GET", "/api/users/ben/presence", headers=BACKEND))["online"] is True
            for query in ("limit=0", "limit=1001", "limit=x", "cursor="):
                assert (await api.call("GET", f"/api/presence?{query}", headers=BACKEND))[0] == 400, query
            assert (await api.call("GET", "/api/users/ann/presence", headers=as_user("ann")))[0] == 403

    run(main())


def test_disconnect_closes_every_connection_of_the_user(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            alice1, alice2, bob = await h.connect("alice"), await h.connect("alice"), await h.connect("bob")
            closed = await api.ok("POST", "/api/users/alice/disconnect", headers=BACKEND)
            assert closed == {"closed_connections": 2}
            for client in (alice1, alice2):
                await client.ws.wait_closed()
                assert client.ws.close_code == 4501  # the default: do not reconnect
            await marker(api, bob)  # bob's connection stays open
            carol = await h.connect("carol")
            dave = await h.connect("dave")
            nothing = {"code": None, "reason": None}  # null: the default code, no reason
            assert await api.ok("POST", "/api/users/dave/disconnect", json=nothing, headers=BACKEND) == {
                "closed_connections": 1
            }
            await dave.ws.wait_closed()
            assert (dave.ws.close_code, dave.ws.close_reason) == (4501, "")
            body = {"code": 4000, "reason": "please sign in again"}
            assert await api.ok("POST", "/api/users/carol/disconnect", json=body, headers=BACKEND) == {
                "closed_connections": 1
            }
            await carol.ws.wait_closed()
            assert (carol.ws.close_code, carol.ws.close_reason) == (4000, "please sign in again")
            assert await api.ok("POST", "/api/users/nobody/disconnect", headers=BACKEND) == {"closed_connections": 0}
            for bad in ({"code": 1001}, {"code": 3000}, {"code": 5000}, {"code": "4000"}, {"reason": "é" * 62}):
                assert (await api.call("POST", "/api/users/bob/disconnect", json=bad, headers=BACKEND))[0] == 400, bad
            assert (await api.call("POST", "/api/users/bob/disconnect", headers=as_user("bob")))[0] == 403
            await marker(api, bob)  # none of the refused ones closed bob's connection

    run(main())


def test_every_way_authentication_fails(run: Run, tmp_path: Any) -> None:
    async def main(url: str) -> None:
        async with chat_server(url) as h, api_of(h) as api:
            expired = jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
            other_key = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
            cases: list[tuple[dict[str, str], str]] = [
                ({}, "send Authorization: Bearer"),
                ({"Authorization": f"Basic {API_KEY}"}, "send Authorization: Bearer"),
                ({"Authorization": "Bearer"}, "send Authorization: Bearer"),
                ({"Authorization": "Bearer not-a-token"}, "invalid token"),
                ({"Authorization": f"Bearer {expired}"}, "expired"),
                ({"Authorization": f"Bearer {other_key}"}, "invalid token"),
                ({"Authorization": f"Bearer {API_KEY}x"}, "invalid token"),  # one byte off the key
            ]
            for path in ("/api/conversations", "/api/presence"):
                for headers, said in cases:
                    status, body, response_headers = await api.call("GET", path, headers=headers)
                    assert status == 401, (path, headers)
                    assert body["error"]["code"] == "unauthorized" and said in body["error"]["message"]
                    assert response_headers["WWW-Authenticate"] == "Bearer"
            assert (await api.call("GET", "/api/presence", headers={"authorization": f"bearer  {API_KEY} "}))[0] == 200

    async def without_a_key(url: str) -> None:
        auth = AuthConfig(secret=AUTH.secret, leeway_s=0.0)
        async with chat_server(url, auth=auth) as h, api_of(h) as api:
            for headers in (BACKEND, as_user("alice"), {}):
                status, body, _ = await api.call("GET", "/api/presence", headers=headers)
                assert (status, body["error"]["code"]) == (401, "unauthorized"), headers
            assert (await api.call("GET", "/api/conversations", headers=as_user("alice")))[0] == 200

    run(main(f"sqlite:///{tmp_path}/one.db"))
    run(without_a_key(f"sqlite:///{tmp_path}/two.db"))


def test_bodies_must_be_json_objects_within_the_limit(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            path = f"/api/conversations/{cid}/messages"
            headers = as_user("alice")
            for content_type in (
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/json; charset=latin-1",
            ):
                status, body, _ = await api.call(
                    "POST", path, data=b'{"content": "x"}', headers={**headers, "Content-Type": content_type}
                )
                assert (status, body["error"]["code"]) == (415, "bad_request"), content_type
            for raw in (b"{", b"[1]", b'"x"', b"\xff"):
                status, body, _ = await api.call(
                    "POST", path, data=raw, headers={**headers, "Content-Type": "application/json"}
                )
                assert (status, body["error"]["code"]) == (400, "bad_request"), raw
            fine = {"Content-Type": "Application/JSON; charset=UTF-8"}
            assert (await api.call("POST", path, data=b'{"content": "ok"}', headers={**headers, **fine}))[0] == 201

    run(main())


def test_ids_in_paths(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h, api_of(h) as api:
            for cid in ("abc", "9007199254740992", "1.5", "-1", "+1", "1e3", "99999999999999999999"):
                status, body, _ = await api.call("GET", f"/api/conversations/{cid}/messages", headers=BACKEND)
                assert (status, body["error"]["code"]) == (400, "bad_request"), cid
            # 0 is an id, of no conversation: answered as any other that does not exist, a user's
            # 403 (nobody learns which exist) and the backend's 404.
            zero = "/api/conversations/0"
            for method, path, body, caller, answer in [
                ("GET", f"{zero}/messages", None, as_user("alice"), (403, "forbidden")),
                ("GET", f"{zero}/messages", None, BACKEND, (404, "not_found")),
                ("POST", f"{zero}/messages", {"content": "x"}, as_user("alice"), (403, "forbidden")),
                ("POST", f"{zero}/messages", {"sender_id": "alice", "content": "x"}, BACKEND, (404, "not_found")),
                ("POST", f"{zero}/members", {"user_id": "alice"}, BACKEND, (404, "not_found")),
                ("DELETE", f"{zero}/members/alice", None, BACKEND, (404, "not_found")),
            ]:
                status, got, _ = await api.call(method, path, json=body, headers=caller)
                assert (status, got["error"]["code"]) == answer, (method, path)
            odd = await h.connect("a b/ç")
            presence = await api.ok("GET", "/api/users/a%20b%2F%C3%A7/presence", headers=BACKEND)
            assert presence == {"user_id": "a b/ç", "online": True, "connections": 1}
            assert await api.ok("POST", "/api/users/a%20b%2F%C3%A7/disconnect", headers=BACKEND) == {
                "closed_connections": 1
            }
            await odd.ws.wait_closed()
            assert (await api.call("GET", f"/api/users/{'x' * 129}/presence", headers=BACKEND))[0] == 400

    run(main())


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/conversations", "GET, HEAD, POST"),
        ("PATCH", "/api/conversations/1/messages", "GET, HEAD, POST"),
        ("GET", "/api/conversations/1/members", "POST"),
        ("POST", "/api/presence", "GET, HEAD"),
        ("DELETE", "/api/publish", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ],
)
def test_methods_a_route_does_not_serve_are_405_with_allow(
    run: Run, tmp_path: Any, method: str, path: str, allow: str
) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h, api_of(h) as api:
            status, body, headers = await api.call(method, path, headers=BACKEND)
            assert (status, headers["Allow"], body["error"]["code"]) == (405, allow, "bad_request")

    run(main())


def test_a_body_announced_over_the_limit_is_refused_before_it_is_sent(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=Limits(max_body_bytes=1000)) as h:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
            head = (
                f"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                "Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
            )
            writer.write(head.encode())  # and not one byte of the ten megabytes announced
            answer = await asyncio.wait_for(reader.read(), 5)
            status_line, _, rest = answer.partition(b"\r\n")
            assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
            assert b"Connection: close" in rest and b'"code":"too_large"' in rest
            writer.close()
            # Within the limit, the same request is read and answered, on a kept-alive connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)

            def broadcast(body: bytes) -> bytes:
                return (
                    f"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body

            writer.write(broadcast(b'{"type": "broadcast"}') + broadcast(b'{"type": "app:x"}'))  # two, pipelined
            answers = b""
            async with asyncio.timeout(5):
                while answers.count(b"HTTP/1.1 ") < 2 or not answers.endswith(b"}"):
                    answers += await reader.read(65536)
            assert answers.count(b"HTTP/1.1 400 ") == 1 and answers.count(b"HTTP/1.1 200 ") == 1
            assert b"Connection: close" not in answers
            writer.close()

    run(main())


class HeldWrites:
    """A real store whose appends wait until the test lets them through."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(self, *args: Any) -> Any:
        await self.gate.wait()
        return await self._store.append(*args)


def test_a_request_not_answered_in_time_is_a_503(run: Run, database_url: str) -> None:
    async def main() -> None:
        real = await open_store(database_url)
        held = HeldWrites(real)
        try:
            limits = Limits(request_timeout_s=0.3)
            async with chat_server(database_url, store=held, limits=limits) as h, api_of(h) as api:  # type: ignore[arg-type]
                cid = await group(api, "alice", "bob", "carol")
                path = f"/api/conversations/{cid}/messages"
                body = {"content": "slow", "client_id": "t1"}
                status, error, headers = await api.call("POST", path, json=body, headers=as_user("alice"))
                assert (status, error["error"]["code"], headers["Retry-After"]) == (503, "unavailable", "1")
                said = error["error"]["message"]
                assert "may yet be stored" in said and "retry with client_id 't1'" in said
                # Without a client_id the server made one up, and the 503 names it for the retry.
                status, error, _ = await api.call("POST", path, json={"content": "mine"}, headers=as_user("bob"))
                assert status == 503
                made_up = re.search(r"retry with client_id '([0-9a-f]{32})'", error["error"]["message"])
                assert made_up is not None, error
                held.gate.set()
                # Retrying with the same client_id is safe: each attempt was stored once.
                retried = await api.ok("POST", path, json=body, headers=as_user("alice"))
                assert retried["message"]["content"] == "slow"
                again = {"content": "mine", "client_id": made_up.group(1)}
                assert (await api.ok("POST", path, json=again, headers=as_user("bob")))["message"]["content"] == "mine"
                stored, _ = await real.history(cid, None, 10)
                assert sorted(m.client_id for m in stored) == sorted(["t1", made_up.group(1)])
        finally:
            await real.close()

    run(main())


def test_a_users_bad_requests_over_http_close_none_of_their_connections(run: Run, tmp_path: Any) -> None:
    """Over the WebSocket, more than 20 client faults in 10 s close the connection (1008); an
    HTTP call has no connection of its own to close, and it must not close the user's others."""

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h, api_of(h) as api:
            cid = await group(api, "alice", "bob", "carol")
            alice = await h.connect("alice")
            for n in range(25):
                status, body, _ = await api.call(
                    "POST", f"/api/conversations/{cid}/messages", json={"client_id": f"x{n}"}, headers=as_user("alice")
                )
                assert (status, body["error"]["code"]) == (400, "bad_request")
            await alice.send(cid, "still connected")

    run(main())


def test_a_removal_whose_request_times_out_still_completes_whole(run: Run, database_url: str) -> None:
    """The cache changes before storage does; a request given up halfway must not leave them
    apart (the user gone from the cache, still a member in storage)."""

    async def main() -> None:
        real = await open_store(database_url)
        held = HeldRemovals(real)
        try:
            limits = Limits(request_timeout_s=0.3)
            async with chat_server(database_url, store=held, limits=limits) as h, api_of(h) as api:  # type: ignore[arg-type]
                cid = await group(api, "alice", "bob", "carol")
                bob = await h.connect("bob")
                status, _, _ = await api.call("DELETE", f"/api/conversations/{cid}/members/bob", headers=BACKEND)
                assert status == 503  # not answered in time: the HTTP layer gave up on it
                held.gate.set()
                assert (await bob.expect("conversation:member_removed"))["payload"]["user_id"] == "bob"
                assert "bob" not in await real.members(cid)  # the removal went on to storage
                status, body, _ = await api.call("DELETE", f"/api/conversations/{cid}/members/bob", headers=BACKEND)
                assert (status, body["error"]["code"]) == (404, "not_found")  # the retry finds it done
        finally:
            await real.close()

    run(main())


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
            body = b'{"type": "app:hi"}'
            writer.write(
                f"POST /api/broadcast HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)  # only now
            answer = await asyncio.wait_for(reader.readuntil(b"}"), 5)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b'{"delivered_connections":0}' in answer
            writer.close()

    run(main())


def test_a_query_that_is_not_utf8_is_400(run: Run, tmp_path: Any) -> None:
    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h, api_of(h) as api:
            status, body, _ = await api.call("GET", "/api/presence?cursor=%ff", headers=BACKEND)
            assert (status, body["error"]["message"]) == (400, "the query is not percent-encoded UTF-8")

    run(main())


@pytest.mark.parametrize(
    "authorization", [None, "Bearer forged", f"Bearer {token('alice')}"], ids=["nobody", "forged", "user"]
)
def test_only_the_backend_may_send_a_body_larger_than_a_message(
    run: Run, tmp_path: Any, authorization: str | None
) -> None:
    """A user's request is one WebSocket message's worth (`max_message_bytes`); `max_body_bytes`
    is the backend's. Refused from the head, so a stranger cannot make the server hold a
    megabyte for every request it then refuses."""
    users = [f"{n:0100d}" for n in range(1000)]  # a publish to a thousand users: 100 KB

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h:
            reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
            auth = "" if authorization is None else f"Authorization: {authorization}\r\n"
            writer.write(
                f"POST /api/conversations/1/messages HTTP/1.1\r\nHost: x\r\n{auth}"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
            )  # and none of the body
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 413 "), answer
            assert b"request body of 100000 bytes exceeds 65536" in answer
            writer.close()
            async with api_of(h) as api:
                status, body, _ = await api.call(
                    "POST", "/api/publish", json={"user_ids": users, "type": "app:x", "payload": {}}, headers=BACKEND
                )
            assert status == 200, body

    run(main())


class HeldUserSets:
    """A real store whose look-up of one user's conversations waits until the test lets it."""

    def __init__(self, store: MessageStore, user: str) -> None:
        self._store = store
        self._user = user
        self.gate = asyncio.Event()
        self.asked: asyncio.Queue[str] = asyncio.Queue()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def conversation_ids(self, user: str) -> Any:
        if user == self._user:
            self.asked.put_nowait(user)
            await self.gate.wait()
        return await self._store.conversation_ids(user)


def test_a_strangers_refusal_does_not_tell_whether_a_conversation_is_busy(run: Run, database_url: str) -> None:
    """A busy conversation's members are cached; were a stranger refused from them, at once,
    and from storage otherwise, the time of the 403 would tell which conversations are in use.
    The stranger is answered from his own conversations, whatever the conversation's state."""

    async def main() -> None:
        real = await open_store(database_url)
        held = HeldUserSets(real, "dave")
        try:
            async with chat_server(database_url, store=held) as h, api_of(h) as api:  # type: ignore[arg-type]
                cid = await group(api, "alice", "bob", "carol")
                alice = await h.connect("alice")
                await alice.send(cid, "busy")  # its members are cached now
                body = {"content": "x", "client_id": "d1"}
                path = f"/api/conversations/{cid}/messages"
                refused = asyncio.create_task(api.call("POST", path, json=body, headers=as_user("dave")))
                assert await asyncio.wait_for(held.asked.get(), 5) == "dave"  # his own set is asked for
                assert not refused.done()
                held.gate.set()
                status, error, _ = await refused
                assert (status, error["error"]["code"]) == (403, "forbidden")
                await alice.ws.close()
        finally:
            await real.close()

    run(main())

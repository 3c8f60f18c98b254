"""The chat protocol's one machine-readable schema (sohbet/chat/protocol.schema.json) holds the real
server to it, and the client's generated types to the schema.

A real server (`chat_server`, on SQLite and on Postgres) is driven through every request type,
answered and refused, and through every event other users and the application's backend cause.
Every envelope a connection receives is validated against the schema of its type as it arrives
(the connection class records the traffic), so a field the server sends and the schema does not
describe fails the test: the server's objects are closed. Every request sent must validate
against its request schema, except the ones a test sends malformed on purpose, which must not:
the schema accepts what the server accepts. Every event type the schema lists must have been
seen.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from websockets.asyncio.client import ClientConnection
from websockets.typing import Data

from sohbet.chat import wire
from sohbet.errors import ErrorCode

from ..chatkit import API_KEY, Harness, WsChat, chat_server, token, with_chat
from ..conftest import required_program

Run = Callable[[Coroutine[Any, Any, Any]], Any]

ROOT = Path(__file__).parent.parent.parent
#: Read as the package ships it (pyproject's package-data), not from the source tree.
SCHEMA: dict[str, Any] = json.loads(files("sohbet.chat").joinpath("protocol.schema.json").read_text())
DEFS: dict[str, Any] = SCHEMA["$defs"]
REQUESTS: dict[str, dict[str, Any]] = SCHEMA["x-sohbet"]["requests"]
EVENTS: dict[str, str] = SCHEMA["x-sohbet"]["events"]
APP_PREFIX: str = SCHEMA["x-sohbet"]["app_events"]["prefix"]
OPENAPI: dict[str, Any] = json.loads(files("sohbet.api").joinpath("openapi.json").read_text())

BAD, TOO_LARGE, FORBIDDEN = ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE, ErrorCode.FORBIDDEN
NOBODYS = 999_999  # a conversation id nobody's conversation has


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator of the `$defs` entry *name*, its `$ref`s resolved within the schema."""
    return Draft202012Validator(
        {"$defs": DEFS, "$ref": f"#/$defs/{name}"}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def problems(name: str, value: Any) -> list[str]:
    """Why *value* is not a valid `$defs` entry *name* (empty: it is)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator(name).iter_errors(value)
    ]


def request_problems(kind: str, payload: Any) -> list[str]:
    """Why *payload* is not a valid `kind` request."""
    return problems(REQUESTS[kind]["payload"], payload)


class Traffic:
    """What the test's connections sent and received, each message checked against the schema."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        #: Every request sent: its text, its ref, and why it is not valid (empty: it is).
        self.sent: list[tuple[str, str | None, list[str]]] = []
        #: The requests sent malformed on purpose, by ref or by their whole text.
        self.meant_invalid: set[str] = set()

    def connection(self) -> type[ClientConnection]:
        """The `websockets` connection class that reports to this record (`connect`'s `create_connection`)."""
        traffic = self

        class Recording(ClientConnection):
            async def recv(self, decode: bool | None = None) -> Data:  # type: ignore[override]
                data = await super().recv(decode)
                traffic.received(data)
                return data

            async def send(self, message: Any, text: bool | None = None) -> None:
                if isinstance(message, str):
                    traffic.sending(message)
                await super().send(message, text=text)

        return Recording

    def received(self, data: Data) -> None:
        """Check one message from the server: its envelope, then its payload by its type."""
        assert isinstance(data, str), f"the server sent a binary frame: {data!r}"
        envelope = json.loads(data)
        wrong = problems("Envelope", envelope)
        kind = envelope.get("type")
        if not wrong and kind.startswith(APP_PREFIX):
            wrong = [] if isinstance(envelope.get("payload"), dict) else ["an app event's payload must be an object"]
        elif not wrong:
            assert kind in EVENTS, f"the server sent {kind!r}, a type the schema does not list: {data}"
            assert "payload" in envelope, f"the server always sends a payload: {data}"
            wrong = problems(EVENTS[kind], envelope["payload"])
        assert not wrong, f"the server sent what the schema does not describe: {data}\n" + "\n".join(wrong)
        self.seen[kind] += 1

    def sending(self, text: str) -> None:
        """Record one request (checked at the end, when it is known which were malformed on purpose)."""
        try:
            envelope = json.loads(text)
        except ValueError:
            self.sent.append((text, None, ["not JSON"]))
            return
        wrong = problems("Envelope", envelope)
        if not wrong and envelope["type"] in REQUESTS:
            wrong = request_problems(envelope["type"], envelope.get("payload", {}))
        elif not wrong:
            wrong = [f"{envelope['type']!r} is no request type"]
        self.sent.append((text, envelope.get("ref") if isinstance(envelope, dict) else None, wrong))

    def unexpectedly_invalid(self) -> list[str]:
        """The requests sent that the schema refuses, but for those meant to be malformed."""
        meant = self.meant_invalid
        return [f"{text}: {wrong}" for text, ref, wrong in self.sent if wrong and not {text, ref} & meant]

    async def ok(self, client: WsChat, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A request the schema accepts, answered with the reply the schema names for it."""
        assert REQUESTS[kind]["reply"] is not None
        assert request_problems(kind, payload) == [], (kind, payload)
        reply = await client.request(kind, payload)
        assert reply["type"] == REQUESTS[kind]["reply"], reply
        return dict(reply["payload"])

    async def refused(
        self, client: WsChat, kind: str, payload: dict[str, Any], code: ErrorCode, *, valid: bool
    ) -> dict[str, Any]:
        """A request the server refuses with *code*; whether the schema accepts it is *valid*:
        what is malformed the schema refuses too, what breaks a rule of state it cannot."""
        wrong = request_problems(kind, payload)
        assert (not wrong) == valid, (kind, payload, wrong)
        ref = f"refused-{len(self.sent)}"
        if not valid:
            self.meant_invalid.add(ref)
        reply = await client.request(kind, payload, ref=ref)
        assert reply["type"] == "error" and reply["payload"]["code"] == code, (kind, payload, reply)
        return dict(reply["payload"])

    async def malformed(self, client: WsChat, text: str) -> dict[str, Any]:
        """Send *text* as it is (not a valid envelope) and return the error that answers it."""
        self.meant_invalid.add(text)
        await client.ws.send(text)
        return await client.expect("error")

    async def signal(self, client: WsChat, kind: str, payload: dict[str, Any]) -> None:
        """A request without a reply (`chat:typing`, `chat:read`); the schema accepts it."""
        assert REQUESTS[kind]["reply"] is None
        assert request_problems(kind, payload) == [], (kind, payload)
        await client.send_raw({"type": kind, "payload": payload})


@asynccontextmanager
async def backend(h: Harness) -> AsyncIterator[aiohttp.ClientSession]:
    """The application's backend: the HTTP API with the API key."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{h.server.port}", headers=headers) as session:
        yield session


def test_every_message_the_server_sends_is_described_by_the_schema(run: Run, database_url: str) -> None:
    chat = with_chat(
        presence_grace_s=0.2,  # user:offline within a second
        sync_per_conversation=2,  # a sync of three messages is cut short: complete false
        sync_rate_per_s=0.001,  # the third sync is rate_limited, deterministically
        sync_burst=2,
        max_errors_per_10s=1000,  # this test is refused on purpose many times
    )

    async def main() -> None:
        traffic = Traffic()
        async with chat_server(database_url, chat=chat) as h, backend(h) as http:

            async def connect(user: str) -> WsChat:
                return await h.connect(user, create_connection=traffic.connection())

            alice, bob = await connect("alice"), await connect("bob")

            # conversation:create, and conversation:created to the other member's connections
            direct = (await traffic.ok(alice, "conversation:create", {"members": ["bob"]}))["conversation"]
            assert direct["title"] is None and direct["kind"] == "direct"
            await bob.expect("conversation:created")
            created = await traffic.ok(alice, "conversation:create", {"members": ["bob", "carol"], "title": "plans"})
            group = created["conversation"]["id"]
            await bob.expect("conversation:created")
            await traffic.refused(alice, "conversation:create", {"members": "bob"}, BAD, valid=False)
            await traffic.refused(
                alice, "conversation:create", {"members": ["bob", "x"], "title": ""}, BAD, valid=False
            )
            # Two distinct members are needed: a rule about the creator, which no schema of the payload states.
            await traffic.refused(alice, "conversation:create", {"members": ["alice"]}, BAD, valid=True)

            # user:online and user:offline, to those who share a conversation
            carol = await connect("carol")
            for client in (alice, bob):
                assert (await client.expect("user:online"))["payload"] == {"user_id": "carol"}
            await carol.ws.close()
            for client in (alice, bob):
                assert (await client.expect("user:offline"))["payload"] == {"user_id": "carol"}

            # chat:send, chat:ack, chat:message
            ack = await traffic.ok(alice, "chat:send", {"conversation_id": group, "content": "hi", "client_id": "m1"})
            assert (await bob.expect("chat:message"))["payload"] == {"message": ack["message"]}
            for n in (2, 3):
                await traffic.ok(
                    alice, "chat:send", {"conversation_id": group, "content": f"{n}", "client_id": f"m{n}"}
                )
                await bob.expect("chat:message")
            send = {"conversation_id": group, "content": "x", "client_id": "m9"}
            await traffic.refused(alice, "chat:send", {**send, "client_id": ""}, BAD, valid=False)
            await traffic.refused(alice, "chat:send", {**send, "content": "x" * 4001}, TOO_LARGE, valid=False)
            await traffic.refused(alice, "chat:send", {**send, "conversation_id": NOBODYS}, FORBIDDEN, valid=True)
            # 0 is an id (of no conversation), and the schema says so; -1 is none.
            await traffic.refused(alice, "chat:send", {**send, "conversation_id": 0}, FORBIDDEN, valid=True)
            await traffic.refused(alice, "chat:send", {**send, "conversation_id": -1}, BAD, valid=False)

            # chat:typing to the other members; chat:read to every other connection
            await traffic.signal(alice, "chat:typing", {"conversation_id": group})
            typing = (await bob.expect("chat:typing"))["payload"]
            assert typing["user_id"] == "alice" and typing["expires_in_ms"] == 6000
            await traffic.refused(alice, "chat:typing", {"conversation_id": "plans"}, BAD, valid=False)
            await traffic.refused(alice, "chat:typing", {"conversation_id": NOBODYS}, FORBIDDEN, valid=True)
            await traffic.signal(bob, "chat:read", {"conversation_id": group, "seq": 2})
            read = (await alice.expect("chat:read"))["payload"]
            assert read == {"conversation_id": group, "user_id": "bob", "seq": 2}
            await traffic.refused(bob, "chat:read", {"conversation_id": group, "seq": -1}, BAD, valid=False)
            await traffic.refused(bob, "chat:read", {"conversation_id": NOBODYS, "seq": 1}, FORBIDDEN, valid=True)

            # chat:history
            page = await traffic.ok(alice, "chat:history", {"conversation_id": group, "limit": 2})
            assert page["has_more"] is True and [m["seq"] for m in page["messages"]] == [2, 3]
            older = await traffic.ok(alice, "chat:history", {"conversation_id": group, "before_seq": 2})
            assert older["has_more"] is False
            below_all = await traffic.ok(alice, "chat:history", {"conversation_id": group, "before_seq": 0})
            assert below_all == {"conversation_id": group, "messages": [], "has_more": False}
            await traffic.refused(alice, "chat:history", {"conversation_id": group, "limit": 101}, BAD, valid=False)
            await traffic.refused(alice, "chat:history", {"conversation_id": NOBODYS}, FORBIDDEN, valid=True)

            # sync: replayed chat:message, then sync:done; cut short, then rate_limited
            await traffic.refused(alice, "sync", {"cursors": {"plans": 0}}, BAD, valid=False)
            done = await traffic.ok(alice, "sync", {"cursors": {str(group): 0, str(NOBODYS): 0, "0": 0}})
            assert done["complete"] is False and done["forbidden"] == [NOBODYS, 0]
            assert done["conversations"] == {str(group): 2, str(direct["id"]): 0}
            done = await traffic.ok(alice, "sync", {"cursors": done["conversations"]})
            assert done["complete"] is True and done["forbidden"] == []
            limited = await traffic.refused(alice, "sync", {}, ErrorCode.RATE_LIMITED, valid=True)
            assert limited["retry_after_ms"] > 0

            # conversation:list, paged (next_cursor a string, then null)
            first = await traffic.ok(alice, "conversation:list", {"limit": 1})
            assert isinstance(first["next_cursor"], str) and first["conversations"][0]["unread"] == 0
            rest = await traffic.ok(alice, "conversation:list", {"cursor": first["next_cursor"]})
            assert rest["next_cursor"] is None
            listed = await traffic.ok(bob, "conversation:list", {})
            assert {c["id"]: c["unread"] for c in listed["conversations"]} == {group: 1, direct["id"]: 0}
            await traffic.refused(alice, "conversation:list", {"limit": 0}, BAD, valid=False)
            # A cursor is opaque: one the server never handed out is well-formed, and refused.
            await traffic.refused(alice, "conversation:list", {"cursor": "made-up"}, BAD, valid=True)

            # conversation:members, paged
            members = await traffic.ok(alice, "conversation:members", {"conversation_id": group, "limit": 1})
            assert members["members"] == ["alice"] and members["next_cursor"] == "alice"
            members = await traffic.ok(alice, "conversation:members", {"conversation_id": group, "cursor": "alice"})
            assert members == {"conversation_id": group, "members": ["bob", "carol"], "next_cursor": None}
            await traffic.refused(
                alice, "conversation:members", {"conversation_id": group, "limit": 1001}, BAD, valid=False
            )
            await traffic.refused(alice, "conversation:members", {"conversation_id": NOBODYS}, FORBIDDEN, valid=True)

            # presence:query
            state = await traffic.ok(alice, "presence:query", {"user_ids": ["bob", "carol", "zed"]})
            assert state == {"online": ["bob"]}
            many = {"user_ids": [f"u{i}" for i in range(501)]}
            await traffic.refused(alice, "presence:query", many, TOO_LARGE, valid=False)
            await traffic.refused(alice, "presence:query", {"user_ids": "bob"}, BAD, valid=False)

            # auth:refresh
            refreshed = await traffic.ok(alice, "auth:refresh", {"token": token("alice", 7200)})
            assert refreshed["exp"] > alice.exp
            await traffic.refused(alice, "auth:refresh", {"token": token("bob")}, ErrorCode.UNAUTHORIZED, valid=True)
            await traffic.refused(alice, "auth:refresh", {"token": ""}, BAD, valid=False)

            # conversation:member_added / _removed, from the application's backend
            async with http.post(f"/api/conversations/{group}/members", json={"user_id": "dave"}) as response:
                assert response.status == 200, await response.text()
            for client in (alice, bob):
                assert (await client.expect("conversation:member_added"))["payload"] == {
                    "conversation_id": group, "user_id": "dave"
                }  # fmt: skip
            async with http.delete(f"/api/conversations/{group}/members/dave") as response:
                assert response.status == 204, await response.text()
            for client in (alice, bob):
                assert (await client.expect("conversation:member_removed"))["payload"]["user_id"] == "dave"

            # conversation:leave: conversation:left, and conversation:member_removed to the others
            left = await traffic.ok(bob, "conversation:leave", {"conversation_id": group})
            assert left == {"conversation_id": group}
            assert (await alice.expect("conversation:member_removed"))["payload"]["user_id"] == "bob"
            await traffic.refused(bob, "conversation:leave", {"conversation_id": group}, FORBIDDEN, valid=True)
            await traffic.refused(bob, "conversation:leave", {}, BAD, valid=False)

            # an application's event: any object payload under an app: type
            body = {"user_ids": ["alice"], "type": "app:notice", "payload": {"text": "hi", "n": [1, None]}}
            async with http.post("/api/publish", json=body) as response:
                assert response.status == 200, await response.text()
            assert (await alice.expect("app:notice"))["payload"] == body["payload"]

            # envelopes the server cannot take: its errors are the schema's too
            await traffic.malformed(alice, "{not json")
            await traffic.malformed(alice, "[1, 2]")
            error = await traffic.malformed(alice, json.dumps({"type": "chat:send", "ref": ""}))
            assert error["payload"]["code"] == BAD and "ref" not in error
            error = await traffic.malformed(alice, json.dumps({"type": "chat:shout", "ref": "shout"}))
            assert error["payload"]["code"] == BAD and error["ref"] == "shout"

            for client in (alice, bob):
                await client.nothing_pending()  # everything sent to them was received, and so checked

        assert traffic.unexpectedly_invalid() == [], "requests the schema refuses, though the server took them"
        missing = sorted(set(EVENTS) - set(traffic.seen))
        assert missing == [], f"event types the schema lists that the server never sent here: {missing}"

    run(main())


# --- the schema, the code and the HTTP API's description agree ----------------------------------


def test_the_schema_is_valid_and_names_what_the_server_defines() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    sohbet = SCHEMA["x-sohbet"]
    assert sohbet["protocol"] == wire.PROTOCOL_VERSION
    assert sohbet["subprotocol"] == wire.SUBPROTOCOL
    assert APP_PREFIX == wire.APP_EVENT_PREFIX
    assert list(REQUESTS) == [kind.value for kind in wire.RequestType]
    assert list(EVENTS) == [kind.value for kind in wire.EventType]
    assert DEFS["ErrorCode"]["enum"] == [code.value for code in ErrorCode]
    for kind, request in REQUESTS.items():
        assert request["payload"] in DEFS, kind
        assert request["reply"] is None or request["reply"] in EVENTS, kind
    for kind, name in EVENTS.items():
        assert name in DEFS, kind
        assert DEFS[name].get("additionalProperties") is False, f"{name}: what the server sends is closed"
    for name in ("Message", "Conversation", "ConversationListItem", "Limits", "Envelope"):
        assert DEFS[name].get("additionalProperties") is False, f"{name}: what the server sends is closed"


def _plain(schema: Any, root: dict[str, Any], prefix: str) -> Any:
    """*schema* with every `$ref` into *root* (whose refs start with *prefix*) replaced by what it
    names, and without the keywords that only explain (descriptions, examples, defaults)."""
    if isinstance(schema, list):
        return [_plain(item, root, prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    ref = schema.get("$ref")
    if ref is not None:
        assert ref.startswith(prefix), ref
        target: Any = root
        for key in ref.removeprefix(prefix).split("/"):
            target = target[key]
        out.update(_plain(target, root, prefix))
    for key, value in schema.items():
        if key not in {"$ref", "description", "examples", "default", "title"}:
            out[key] = _plain(value, root, prefix)
    return out


#: Constraints the OpenAPI document leaves out of an object it shares with the WebSocket, and why
#: that is harmless: `Message.client_id` without U+0000 (its own `SendMessageRequest.client_id`
#: says it; the server refuses such a client_id, so it never sends one back).
LOOSER_IN_OPENAPI = {("Message", "client_id"): ("pattern",)}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("Message", "Message"), ("Conversation", "Conversation"), ("ConversationListItem", "ListedConversation")],
)
def test_the_schemas_objects_are_the_http_apis(ours: str, theirs: str) -> None:
    """The WebSocket and the HTTP API carry the same objects: the same fields, types and ranges.

    The differences allowed: the WebSocket schema closes its objects (an undocumented field fails
    the traffic check above), which the OpenAPI document does not; and `LOOSER_IN_OPENAPI`.
    """
    mine = _plain(DEFS[ours], SCHEMA, "#/")
    api = _plain(OPENAPI["components"]["schemas"][theirs], OPENAPI, "#/")
    assert mine.pop("additionalProperties") is False
    assert set(mine["required"]) == set(api["required"])
    assert list(mine["properties"]) == list(api["properties"])
    for name, schema in mine["properties"].items():
        for keyword in LOOSER_IN_OPENAPI.get((ours, name), ()):
            assert keyword not in api["properties"][name], f"{ours}.{name}: drop it from LOOSER_IN_OPENAPI"
            del schema[keyword]
        assert schema == api["properties"][name], name
    assert {k: v for k, v in mine.items() if k not in {"required", "properties"}} == {
        k: v for k, v in api.items() if k not in {"required", "properties"}
    }


# --- the client's generated types --------------------------------------------------------------


def test_the_typescript_types_are_generated_from_the_schema() -> None:
    """clients/js/src/protocol.ts is what scripts/gen-protocol.mjs writes from the schema now."""
    node = required_program("node", "the check that the client's protocol types are not stale")
    script = ROOT / "clients" / "js" / "scripts" / "gen-protocol.mjs"
    done = subprocess.run(
        [node, str(script), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr + done.stdout

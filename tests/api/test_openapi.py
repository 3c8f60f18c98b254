"""The HTTP API's description (sohbet/api/openapi.json) held true to the server.

The document is valid OpenAPI 3.1; every route of a real server is in it and every operation in it
is routed; and a real server, driven over real HTTP (aiohttp) through every operation with each
caller it accepts and into every status the document promises, answers only documented statuses,
with the documented content type and required headers, and bodies that validate against the
documented schemas (JSON Schema 2020-12, with `$ref`s resolved by `referencing`). The schemas are
checked strictly here: a field the server sends but the document does not name fails too, so the
document cannot fall behind the server (clients are still told to ignore fields they do not know).

Storage faults come from a real store behind a wrapper that fails on demand, as an outage or a
bug would; nothing else is replaced.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from sohbet.api import openapi
from sohbet.api.router import Router
from sohbet.broker.redis import RedisBroker
from sohbet.chat.model import ConversationKind
from sohbet.errors import StoreUnavailable
from sohbet.store import MessageStore
from sohbet.ws.config import Limits
from sohbet.ws.http11 import Request, Response

from ..chatkit import API_KEY, Harness, chat_server, open_store, token, with_chat
from ..clusterkit import free_port
from ..integration.test_processes import SECRET as PROCESS_SECRET
from ..integration.test_processes import server_process

Run = Callable[[Coroutine[Any, Any, Any]], Any]

SHIPPED: dict[str, Any] = json.loads(files("sohbet.api").joinpath("openapi.json").read_bytes())
URI = "urn:sohbet:openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
#: Routed, but not HTTP: the WebSocket endpoint, which the document mentions and does not describe.
NOT_HTTP = {"/ws"}
#: Routed with `--demo` only, and not the API: the demo page's routes, which the document names and
#: does not describe (docs/operations.md, "The demo page").
DEMO_ONLY = {("GET", "/"), ("GET", "/demo/demo.mjs"), ("GET", "/demo/demo.css"), ("POST", "/demo/token")}
#: Described ahead of the server: the metrics endpoint is being added. The tests hold an operation
#: here to the document only where the server routes it; once it does, this set can be emptied.
NOT_YET_ROUTED: set[tuple[str, str]] = set()
#: Documented statuses no request from outside can bring about, and why.
UNREACHABLE = {
    **{
        (op, HTTPStatus.INTERNAL_SERVER_ERROR): "touches no storage: only a bug in the server answers 500"
        for op in ("publishEvent", "broadcastEvent", "getPresence", "listOnline", "disconnectUser")
    },
    ("getMetrics", HTTPStatus.UNAUTHORIZED): "needs a metrics token configured; the metrics tests hold it",
}

BACKEND = {"Authorization": f"Bearer {API_KEY}"}
#: The security schemes of the two callers.
CALLERS = ("apiKey", "userToken")
NOBODY: dict[str, str] = {}
FORGED = {"Authorization": "Bearer not-a-token"}
#: A server small enough to reach its limits in a few requests.
CHAT = with_chat(
    max_group_members=4,
    create_rate_per_s=0.001,
    create_burst=3,
    send_rate_per_s=0.001,
    send_burst=3,
    query_rate_per_s=0.001,
    query_burst=3,
)
MAX_BODY_BYTES = 100_000


def as_user(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


def scheme_of(caller: dict[str, str]) -> str | None:
    """The security scheme of a caller's credential: the API key, a user's JWT, or None."""
    credential = caller.get("Authorization", "")
    if credential == BACKEND["Authorization"]:
        return "apiKey"
    if credential.startswith("Bearer eyJ") and credential.count(".") == 2:  # base64 of '{"', then 3 parts
        return "userToken"
    return None


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation of *document*, by (METHOD, path)."""
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def _strict(schema: Any) -> Any:
    """The schema with every complete object (one that says `type: object`, and nothing of
    fields beyond its own) closed to fields it does not name; overlays that narrow one (the error
    schemas' `code`) say no type, and stay open."""
    if isinstance(schema, dict):
        closed = {key: _strict(value) for key, value in schema.items()}
        if closed.get("type") == "object" and "properties" in closed and "additionalProperties" not in closed:
            closed.setdefault("unevaluatedProperties", False)
        return closed
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def _pointer(*parts: str) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def _media(value: str) -> tuple[str, dict[str, str]]:
    kind, *options = value.split(";")
    params = dict(option.strip().lower().partition("=")[::2] for option in options if option.strip())
    return kind.strip().lower(), params


class Contract:
    """What the document promises, checked against real answers; remembers which (operation,
    status) pairs it has seen."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(URI, DRAFT202012.create_resource(_strict(document)))
        self.operations = operations(document)
        self.paths = [
            (re.compile(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(path)) + r"\Z"), path)
            for path in document["paths"]
        ]
        self.seen: set[tuple[str, int]] = set()
        #: (operationId, security scheme) pairs that were let in: answered neither 401 nor 403.
        self.admitted: set[tuple[str, str]] = set()

    def path_of(self, concrete: str) -> str:
        matches = [path for regex, path in self.paths if regex.match(concrete)]
        assert len(matches) == 1, f"{concrete} matches {matches} in the document"
        return matches[0]

    def schema_errors(self, pointer: str, instance: Any) -> list[str]:
        validator = Draft202012Validator({"$ref": f"{URI}#{pointer}"}, registry=self.registry)
        found = validator.iter_errors(instance)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]

    def response(self, method: str, path: str, status: int) -> tuple[str, dict[str, Any]]:
        """The documented response of (method, path) for *status*: its JSON pointer and object."""
        operation = self.operations[(method, path)]
        responses = operation["responses"]
        assert str(status) in responses, (
            f"{method} {path} answered {status}, which {operation['operationId']} does not document"
        )
        pointer = _pointer("paths", path, method.lower(), "responses", str(status))
        found = responses[str(status)]
        while "$ref" in found:  # a Reference Object; its own description only overrides the text
            pointer = found["$ref"].removeprefix("#")
            found = self.resolve(pointer)
        return pointer, found

    def resolve(self, pointer: str) -> Any:
        node: Any = self.document
        for part in pointer.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def check(self, method: str, concrete: str, *, scheme: str | None, status: int, headers: Any, body: bytes) -> None:
        """Hold one real answer, to a request made with a credential of *scheme* (None: with
        none, or one that cannot verify), to the document."""
        path = self.path_of(concrete)
        assert (method, path) in self.operations, f"{method} {path} is not documented"
        operation = self.operations[(method, path)]
        pointer, response = self.response(method, path, status)
        self.seen.add((operation["operationId"], status))
        where = f"{method} {concrete} -> {status}"
        accepted = {name for requirement in operation["security"] for name in requirement}
        refused = status in {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN}
        if scheme is not None and accepted and scheme not in accepted:
            assert refused, f"{where}: let in with {scheme}, which the document does not list"
        elif scheme is not None and not refused:
            self.admitted.add((operation["operationId"], scheme))
        for name, declared in response.get("headers", {}).items():
            header = declared
            while "$ref" in header:
                header = self.resolve(header["$ref"].removeprefix("#"))
            value = headers.get(name)
            if value is None:
                assert not header.get("required"), f"{where}: no {name} header"
                continue
            typed: Any = int(value) if header["schema"].get("type") == "integer" else value
            assert Draft202012Validator(header["schema"]).is_valid(typed), f"{where}: {name}: {value}"
        content = response.get("content")
        if content is None:
            assert body == b"", f"{where}: a body where none is documented"
            return
        kind, params = _media(headers.get("Content-Type", ""))
        for documented in content:
            documented_kind, documented_params = _media(documented)
            if documented_kind == kind and documented_params.items() <= params.items():
                break
        else:
            raise AssertionError(f"{where}: Content-Type {headers.get('Content-Type')!r} is not one of {list(content)}")
        if kind != "application/json":
            return
        instance = json.loads(body)
        errors = self.schema_errors(pointer + _pointer("content", documented, "schema"), instance)
        assert not errors, f"{where}: {errors} in {str(instance)[:500]}"

    def unexercised(self, routes: set[tuple[str, str]]) -> set[tuple[str, int]]:
        """The documented (operation, status) pairs no answer has shown yet, but those that cannot
        be reached and those of operations *routes* does not serve yet (`NOT_YET_ROUTED`)."""
        documented = {
            (operation["operationId"], int(status)): key
            for key, operation in self.operations.items()
            for status in operation["responses"]
        }
        assert set(UNREACHABLE) <= set(documented), set(UNREACHABLE) - set(documented)
        served = {pair for pair, key in documented.items() if key in routes or key not in NOT_YET_ROUTED}
        return served - set(UNREACHABLE) - self.seen

    def unadmitted(self) -> set[tuple[str, str]]:
        """The (operation, scheme) pairs the document lists that no answer let in."""
        listed = {
            (operation["operationId"], name)
            for operation in self.operations.values()
            for requirement in operation["security"]
            for name in requirement
            if name in CALLERS
        }
        return listed - self.admitted


class Client:
    """An HTTP client of one server that holds every answer to the contract."""

    def __init__(self, session: aiohttp.ClientSession, contract: Contract) -> None:
        self.session = session
        self.contract = contract

    async def call(self, method: str, path: str, status: int | set[int], caller: dict[str, str], **kwargs: Any) -> Any:
        """Make a request, assert its status (the walk must reach what it means to; one of a set
        where either answer is right), check it against the document, and return the JSON body
        (None for none)."""
        headers = {**caller, **kwargs.pop("headers", {})}
        async with self.session.request(method, path, headers=headers, **kwargs) as r:
            body = await r.read()
            assert r.status in ({status} if isinstance(status, int) else status), (method, path, r.status, body[:300])
            self.contract.check(
                method, path.partition("?")[0], scheme=scheme_of(caller), status=r.status, headers=r.headers, body=body
            )
            return json.loads(body) if body and r.content_type == "application/json" else None


@asynccontextmanager
async def client_of(h: Harness, contract: Contract) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{h.server.port}") as session:
        yield Client(session, contract)


class Faulty:
    """A real store that, on demand, fails every call as an outage (`StoreUnavailable`) or a bug
    (any other exception) would, or holds every call until let through."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.failure: Exception | None = None
        self.gate: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(real):
            return real

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.gate is not None:
                await self.gate.wait()
            if self.failure is not None:
                raise self.failure
            return await real(*args, **kwargs)

        return call


# --- the document ----------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(SHIPPED, cls=OpenAPIV31SpecValidator)
    assert SHIPPED["openapi"] == "3.1.0"
    ids = [operation["operationId"] for operation in operations(SHIPPED).values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for (method, path), operation in operations(SHIPPED).items():
        assert operation.get("summary") and operation.get("description"), (method, path)
        assert "security" in operation, f"{method} {path} must say which credentials it accepts"
    # Every schema the document holds is a valid JSON Schema 2020-12.
    for schema in SHIPPED["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("demo", [False, True], ids=["plain", "demo"])
def test_every_route_is_documented_and_every_operation_routed(tmp_path: Any, demo: bool) -> None:
    async def main() -> set[tuple[str, str]]:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", demo=demo) as h:
            assert h.app is not None
            return set(h.app.gateway.routes.routes)

    routes = asyncio.run(main())
    # The WebSocket endpoint answers every method (426 without an upgrade), and nothing else does.
    assert {path for method, path in routes if method == "*"} == NOT_HTTP
    routed = {(method, path) for method, path in routes if path not in NOT_HTTP}
    documented = set(operations(SHIPPED))
    assert not any(path in NOT_HTTP for _, path in documented)
    assert not documented & DEMO_ONLY
    assert routed - documented == (DEMO_ONLY if demo else set()), "routes the document does not describe"
    assert documented - routed <= NOT_YET_ROUTED, "operations no route serves"


# --- real answers ----------------------------------------------------------------------------


async def walk(h: Harness, api: Client) -> None:
    """Every operation with each caller it accepts, and into each error it documents."""
    plain_text = {"Content-Type": "text/plain"}
    raw_json = {"Content-Type": "application/json"}

    # createConversation
    created = await api.call("POST", "/api/conversations", 201, BACKEND, json={"members": ["alice", "bob", "carol"]})
    group = created["conversation"]["id"]
    await api.call("POST", "/api/conversations", 201, as_user("alice"), json={"members": ["bob"], "title": None})
    await api.call("POST", "/api/conversations", 201, as_user("alice"), json={"members": ["bob"]})  # the same pair
    await api.call("POST", "/api/conversations", 400, as_user("alice"), json={"members": []})
    await api.call("POST", "/api/conversations", 400, BACKEND, json={"members": ["alone"]})
    await api.call("POST", "/api/conversations", 400, BACKEND, data=b"[1]", headers=raw_json)
    await api.call("POST", "/api/conversations", 401, NOBODY, json={"members": ["bob"]})
    await api.call("POST", "/api/conversations", 413, BACKEND, json={"members": ["a", "b", "c", "d", "e"]})
    await api.call("POST", "/api/conversations", 415, BACKEND, data=b'{"members": ["a", "b"]}', headers=plain_text)
    for n in range(3):
        await api.call("POST", "/api/conversations", 201, as_user("rl"), json={"members": [f"u{n}", "x", "y"]})
    await api.call("POST", "/api/conversations", 429, as_user("rl"), json={"members": ["u9", "x", "y"]})

    # listConversations
    page = await api.call("GET", "/api/conversations?limit=1", 200, as_user("alice"))
    assert page["next_cursor"] is not None
    await api.call("GET", f"/api/conversations?cursor={quote(page['next_cursor'], safe='')}", 200, as_user("alice"))
    await api.call("GET", "/api/conversations?cursor=nope", 400, as_user("alice"))
    await api.call("GET", "/api/conversations", 401, FORGED)
    await api.call("GET", "/api/conversations", 403, BACKEND)
    for _ in range(3):
        await api.call("GET", "/api/conversations", 200, as_user("rl"))
    await api.call("GET", "/api/conversations", 429, as_user("rl"))

    # addMember, removeMember
    members = f"/api/conversations/{group}/members"
    direct = (await api.call("POST", "/api/conversations", 201, BACKEND, json={"members": ["p", "q"]}))["conversation"]
    await api.call("POST", members, 200, BACKEND, json={"user_id": "alice"})  # a member: nothing changes
    await api.call("POST", members, 200, BACKEND, json={"user_id": "dave"})
    await api.call("POST", members, 413, BACKEND, json={"user_id": "erin"})  # four is full here
    await api.call("POST", f"/api/conversations/{direct['id']}/members", 400, BACKEND, json={"user_id": "r"})
    await api.call("POST", "/api/conversations/0/members", 404, BACKEND, json={"user_id": "r"})  # 0: an id of none
    await api.call("POST", members, 401, FORGED, json={"user_id": "r"})
    await api.call("POST", members, 403, as_user("alice"), json={"user_id": "r"})
    await api.call("POST", "/api/conversations/777777/members", 404, BACKEND, json={"user_id": "r"})
    await api.call("POST", members, 413, BACKEND, json={"user_id": "r", "pad": "x" * MAX_BODY_BYTES})
    await api.call("POST", members, 415, BACKEND, data=b'{"user_id": "r"}', headers=plain_text)
    await api.call("DELETE", f"{members}/dave", 204, BACKEND)
    await api.call("DELETE", f"{members}/dave", 404, BACKEND)
    await api.call("DELETE", "/api/conversations/abc/members/dave", 400, BACKEND)
    await api.call("DELETE", f"{members}/{'x' * 129}", 400, BACKEND)
    await api.call("DELETE", f"{members}/carol", 401, NOBODY)
    await api.call("DELETE", f"{members}/carol", 403, as_user("alice"))
    await api.call("DELETE", "/api/conversations/888888/members/carol", 404, BACKEND)

    # sendMessage
    messages = f"/api/conversations/{group}/messages"
    await api.call("POST", messages, 201, as_user("bob"), json={"content": "hi", "client_id": "b1"})
    await api.call("POST", messages, 200, as_user("bob"), json={"content": "again", "client_id": "b1"})
    await api.call("POST", messages, 201, as_user("bob"), json={"content": "no key", "client_id": None})
    sender = {"sender_id": "carol", "content": "from the backend", "client_id": "k1"}
    await api.call("POST", messages, 201, BACKEND, json=sender)
    await api.call("POST", messages, 200, BACKEND, json=sender)
    await api.call("POST", messages, 400, as_user("bob"), json={"content": "x", "sender_id": "bob"})
    await api.call("POST", messages, 400, BACKEND, json={"content": "who?"})
    await api.call("POST", messages, 401, NOBODY, json={"content": "x"})
    await api.call("POST", messages, 403, as_user("dave"), json={"content": "x"})  # removed above
    await api.call("POST", "/api/conversations/999999/messages", 403, as_user("bob"), json={"content": "x"})
    await api.call("POST", messages, 403, BACKEND, json={**sender, "sender_id": "zed", "client_id": "z"})
    await api.call("POST", "/api/conversations/999999/messages", 404, BACKEND, json={**sender, "client_id": "k2"})
    await api.call("POST", messages, 413, as_user("bob"), json={"content": "x" * 4001})
    await api.call("POST", messages, 415, as_user("bob"), data=b'{"content": "x"}', headers=plain_text)
    limited = await api.call("POST", "/api/conversations", 201, BACKEND, json={"members": ["rl", "x"]})
    limited_messages = f"/api/conversations/{limited['conversation']['id']}/messages"
    for n in range(3):
        await api.call("POST", limited_messages, 201, as_user("rl"), json={"content": f"{n}"})
    await api.call("POST", limited_messages, 429, as_user("rl"), json={"content": "4"})

    # getHistory
    history = await api.call("GET", f"{messages}?limit=2", 200, as_user("alice"))
    assert len(history["messages"]) == 2 and history["has_more"] is True
    await api.call("GET", f"{messages}?before_seq=2", 200, BACKEND)
    await api.call("GET", f"{messages}?limit=0", 400, BACKEND)
    below_all = await api.call("GET", f"{messages}?before_seq=0", 200, as_user("alice"))
    assert below_all == {"messages": [], "has_more": False}
    await api.call("GET", f"{messages}?before_seq=-1", 400, as_user("alice"))
    await api.call("GET", messages, 401, FORGED)
    await api.call("GET", messages, 403, as_user("dave"))
    await api.call("GET", "/api/conversations/424242/messages", 404, BACKEND)
    for _ in range(3):
        await api.call("GET", limited_messages, 200, as_user("rl"))
    await api.call("GET", limited_messages, 429, as_user("rl"))

    # publishEvent, broadcastEvent, with a user online to receive them
    ann = await h.connect("ann")
    await h.connect("ben")
    event = {"user_ids": ["ann"], "type": "app:notice", "payload": {"n": 1}}
    assert (await api.call("POST", "/api/publish", 200, BACKEND, json=event))["delivered_connections"] == 1
    await api.call("POST", "/api/publish", 400, BACKEND, json={**event, "type": "chat:message"})
    await api.call("POST", "/api/publish", 401, NOBODY, json=event)
    await api.call("POST", "/api/publish", 403, as_user("ann"), json=event)
    await api.call("POST", "/api/publish", 413, BACKEND, json={**event, "payload": {"blob": "x" * 70_000}})
    await api.call("POST", "/api/publish", 415, BACKEND, data=json.dumps(event).encode(), headers=plain_text)
    await api.call("POST", "/api/broadcast", 200, BACKEND, json={"type": "app:all"})
    await api.call("POST", "/api/broadcast", 400, BACKEND, json={"type": "app:"})
    await api.call("POST", "/api/broadcast", 401, FORGED, json={"type": "app:all"})
    await api.call("POST", "/api/broadcast", 403, as_user("ann"), json={"type": "app:all"})
    await api.call("POST", "/api/broadcast", 413, BACKEND, json={"type": "app:x", "payload": {"b": "x" * 70_000}})
    await api.call("POST", "/api/broadcast", 415, BACKEND, data=b'{"type": "app:x"}', headers=plain_text)

    # getPresence, listOnline
    await api.call("GET", "/api/users/ann/presence", 200, BACKEND)
    await api.call("GET", f"/api/users/{quote('nobody at all/ç', safe='')}/presence", 200, BACKEND)
    await api.call("GET", f"/api/users/{'x' * 129}/presence", 400, BACKEND)
    await api.call("GET", "/api/users/ann/presence", 401, NOBODY)
    await api.call("GET", "/api/users/ann/presence", 403, as_user("ann"))
    online = await api.call("GET", "/api/presence?limit=1", 200, BACKEND)
    assert online["next_cursor"] == "ann"
    await api.call("GET", "/api/presence?cursor=ann", 200, BACKEND)
    await api.call("GET", "/api/presence?limit=1001", 400, BACKEND)
    await api.call("GET", "/api/presence", 401, FORGED)
    await api.call("GET", "/api/presence", 403, as_user("ann"))

    # disconnectUser
    disconnect = "/api/users/ann/disconnect"
    await api.call("POST", disconnect, 400, BACKEND, json={"code": 1001})
    await api.call("POST", disconnect, 400, BACKEND, json={"reason": "é" * 62})
    await api.call("POST", disconnect, 401, NOBODY)
    await api.call("POST", disconnect, 403, as_user("ann"))
    await api.call("POST", disconnect, 413, BACKEND, json={"reason": "x" * MAX_BODY_BYTES})
    await api.call("POST", disconnect, 415, BACKEND, data=b"{}", headers=plain_text)
    closed = await api.call("POST", disconnect, 200, BACKEND, json={"code": 4000, "reason": "sign in again"})
    assert closed == {"closed_connections": 1}
    await ann.ws.wait_closed()
    await api.call("POST", "/api/users/ben/disconnect", 200, BACKEND)  # no body: the defaults

    # the operations' own endpoints
    served = await api.call("GET", "/api/openapi.json", 200, NOBODY)
    assert served == SHIPPED
    await api.call("GET", "/api/openapi.json", 200, FORGED)  # a credential changes nothing
    await api.call("GET", "/healthz", 200, NOBODY)
    await api.call("GET", "/readyz", 200, NOBODY)
    await api.call("GET", "/client/sohbet.mjs", 200, NOBODY)
    async with api.session.get("/client/sohbet.mjs") as r:
        etag = r.headers["ETag"]
    await api.call("GET", "/client/sohbet.mjs", 304, NOBODY, headers={"If-None-Match": etag})
    assert h.app is not None
    if ("GET", "/metrics") in h.app.gateway.routes.routes:
        await api.call("GET", "/metrics", 200, NOBODY)


def test_real_answers_keep_the_documents_promises(run: Run, database_url: str) -> None:
    contract = Contract(SHIPPED)
    routes: set[tuple[str, str]] = set()

    async def main() -> None:
        limits = Limits(max_body_bytes=MAX_BODY_BYTES)
        async with chat_server(database_url, chat=CHAT, limits=limits) as h, client_of(h, contract) as api:
            assert h.app is not None
            routes.update(h.app.gateway.routes.routes)
            await walk(h, api)
        await faults(database_url, contract)

    run(main())
    missing = contract.unexercised(routes)
    assert not missing, f"documented statuses no request reached: {sorted(missing)}"
    assert not contract.unadmitted(), f"credentials the document lists, never let in: {contract.unadmitted()}"


async def faults(url: str, contract: Contract) -> None:
    """Storage down, a bug behind it, a request not answered in time, and a server stopping."""
    real = await open_store(url)
    try:
        # A group the server has not seen: its first request must load the members from storage.
        group, _ = await real.create_conversation(["alice", "bob", "carol"], "g", ConversationKind.GROUP, 0)
        store = Faulty(real)
        limits = Limits(request_timeout_s=0.3)
        async with chat_server(url, store=store, limits=limits) as h, client_of(h, contract) as api:  # type: ignore[arg-type]  # a real store behind a fault switch
            messages = f"/api/conversations/{group.id}/messages"
            members = f"/api/conversations/{group.id}/members"
            calls: list[tuple[str, str, dict[str, str], Any]] = [
                ("POST", "/api/conversations", BACKEND, {"members": ["a", "b"]}),
                ("POST", "/api/conversations", as_user("alice"), {"members": ["b"]}),
                ("GET", "/api/conversations", as_user("alice"), None),
                ("POST", members, BACKEND, {"user_id": "dave"}),
                ("DELETE", f"{members}/carol", BACKEND, None),
                ("POST", messages, as_user("alice"), {"content": "x", "client_id": "f1"}),
                ("POST", messages, BACKEND, {"content": "x", "client_id": "f2", "sender_id": "bob"}),
                ("GET", messages, as_user("alice"), None),
                ("GET", messages, BACKEND, None),
            ]
            for failure, status in ((RuntimeError("a bug"), 500), (StoreUnavailable("storage is down"), 503)):
                store.failure = failure
                for method, path, caller, body in calls:
                    await api.call(method, path, status, caller, json=body)
            h.app.gateway.readiness.ttl_s = 0  # type: ignore[union-attr]  # answer each probe afresh
            await api.call("GET", "/readyz", 503, NOBODY)
            store.failure = None
            await api.call("GET", "/readyz", 200, NOBODY)
            # Held past the request timeout: 503, and the retry with the same client_id is safe.
            store.gate = asyncio.Event()
            body = {"content": "slow", "client_id": "t1"}
            await api.call("POST", messages, 503, as_user("bob"), json=body)
            store.gate.set()
            store.gate = None
            # The first attempt may have committed by now (200) or be joined by the retry (201).
            await api.call("POST", messages, {200, 201}, as_user("bob"), json=body)
            found, _ = await real.history(group.id, None, 100)
            assert [m.client_id for m in found].count("t1") == 1
            # Stopping: /readyz says so first, as App.shutdown does; the process is alive still.
            h.app.gateway.accepting = False  # type: ignore[union-attr]  # the first step of a shutdown
            await api.call("GET", "/healthz", 200, NOBODY)
            await api.call("GET", "/readyz", 503, NOBODY)
            h.app.gateway.accepting = True  # type: ignore[union-attr]  # the harness shuts down itself
        # A cluster instance whose Redis does not answer (a real client, to a port nobody
        # listens on): what must reach every instance is refused, not half done.
        nowhere = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", "lonely", timeout_s=0.2, retry_s=0.1)
        async with chat_server(url, broker=nowhere) as h, client_of(h, contract) as api:
            await api.call(
                "POST", "/api/publish", 503, BACKEND, json={"user_ids": ["a"], "type": "app:x", "payload": {}}
            )
            await api.call("POST", "/api/broadcast", 503, BACKEND, json={"type": "app:x", "payload": {}})
            await api.call("POST", "/api/users/a/disconnect", 503, BACKEND, json={})
            await api.call("GET", "/readyz", 503, NOBODY)
    finally:
        await real.close()


def test_an_undocumented_method_is_405_with_the_documented_ones_in_allow(tmp_path: Any) -> None:
    contract = Contract(SHIPPED)

    async def main() -> None:
        async with (
            chat_server(f"sqlite:///{tmp_path}/db.sqlite") as h,
            aiohttp.ClientSession(f"http://127.0.0.1:{h.server.port}") as session,
        ):
            assert h.app is not None
            routes = h.app.gateway.routes.routes
            for path, item in SHIPPED["paths"].items():
                documented = {method.upper() for method in item if method in HTTP_METHODS}
                if not {(method, path) for method in documented} & set(routes):
                    continue  # NOT_YET_ROUTED
                allow = ", ".join(sorted(documented | ({"HEAD"} if "GET" in documented else set())))
                concrete = path.replace("{id}", "1").replace("{user_id}", "ann")
                async with session.request("PATCH", concrete, headers=BACKEND) as r:
                    assert (r.status, r.headers["Allow"]) == (405, allow), path
                    body = await r.json()
                assert not contract.schema_errors(_pointer("components", "schemas", "BadRequestError"), body), body

    asyncio.run(main())


def test_the_document_is_served_from_memory() -> None:
    """Built once when the route is added: every answer is the same response, the shipped document."""
    router = Router()
    openapi.register(router)
    request = Request("GET", openapi.PATH, "", "1.1", ())
    first, second = router.dispatch(request)[1], router.dispatch(request)[1]
    assert first is second
    assert isinstance(first, Response)  # a plain route: answered at once
    assert json.loads(first.body) == SHIPPED
    assert first.content_type == "application/json"


# --- generated requests ----------------------------------------------------------------------

#: What schemathesis holds each answer to: the answer's side of the contract. The request side
#: (`positive_data_acceptance`, `negative_data_rejection`) is left out: some rules cannot be said
#: in JSON Schema (what each caller may send, a cursor only the server makes, Python's
#: `isprintable`), and the server answers a schema-violating `content` with 413, as documented.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
USER_OPERATIONS = ("createConversation", "listConversations", "sendMessage", "getHistory")
#: Test cases per operation: the two runs take about 10 s on two cores.
EXAMPLES = 20


def test_generated_requests_get_documented_answers(tmp_path: Any) -> None:
    """schemathesis (examples, boundary coverage, then fuzzing; deterministic) over a running
    `sohbet-server`, once with the API key on every operation and once with a user's token on
    the operations a user may call: no 5xx, and every answer as documented."""
    key = API_KEY
    env = {"SOHBET_JWT_SECRET": PROCESS_SECRET}
    with server_process("--data-dir", str(tmp_path), "--api-key", key, cwd=tmp_path, env=env) as (_, port):
        base = f"http://127.0.0.1:{port}"
        # A conversation for the generated ids to find: the smallest id, alice's.
        body = json.dumps({"members": ["alice", "bob", "carol"]}).encode()
        request = urllib.request.Request(
            f"{base}/api/conversations", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 201
        excluded: list[str] = []
        try:
            urllib.request.urlopen(f"{base}/metrics", timeout=10).close()
        except urllib.error.HTTPError as exc:
            if exc.code == HTTPStatus.NOT_FOUND:  # not routed yet (NOT_YET_ROUTED)
                excluded = ["--exclude-operation-id", "getMetrics"]
        user = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, PROCESS_SECRET, "HS256")
        runs = [
            (f"Bearer {key}", excluded),
            (f"Bearer {user}", [arg for op in USER_OPERATIONS for arg in ("--include-operation-id", op)]),
        ]
        for credential, selection in runs:
            result = subprocess.run(
                [
                    sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
                    "run", f"{base}/api/openapi.json", "--header", f"Authorization: {credential}",
                    "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing",
                    "--max-examples", str(EXAMPLES), "--generation-deterministic", "--workers", "1",
                    "--no-color", *selection,
                ],
                capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
            # It tested every operation it selected (all but the document's own, which it reads).
            counts = re.search(r"Selected: (\d+)/\d+\s+Tested: (\d+)\s", result.stdout)
            assert counts is not None and counts[1] == counts[2] and int(counts[1]) >= len(USER_OPERATIONS), counts

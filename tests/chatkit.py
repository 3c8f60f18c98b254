"""Helpers for the chat tests: a real store, a real server on a free port, an independent client.

The client speaks the protocol through the `websockets` library, not through sohbet's own
client, so a framing or protocol bug shared by our server and client cannot cancel out.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from sohbet.app.cli import make_store
from sohbet.app.compose import App, AppConfig
from sohbet.auth import issue_token
from sohbet.config import AuthConfig, ChatConfig, StoreConfig, WebhookConfig
from sohbet.service import ChatService
from sohbet.store import MessageStore
from sohbet.ws.config import Limits, WebSocketConfig
from sohbet.ws.server import Server

SECRET = "test-secret-that-is-long-enough-for-hs256!"
API_KEY = "the-application-backends-api-key-for-tests"
AUTH = AuthConfig(secret=SECRET, leeway_s=0.0, api_key=API_KEY)


async def open_store(url: str) -> MessageStore:
    """A migrated, empty store (Postgres tables are truncated: one database serves the run)."""
    store = make_store(StoreConfig(url=url))
    await store.migrate()
    if url.startswith("postgresql://"):
        pool = await store._get_pool()  # type: ignore[attr-defined]  # test-only reach into PostgresStore
        await pool.execute("TRUNCATE messages, members, conversations RESTART IDENTITY")
    return store


def token(user: str, ttl_s: float = 3600.0, auth: AuthConfig = AUTH) -> str:
    """A token that lives more than *ttl_s* seconds from now, and at most two more."""
    return issue_token(auth, user, lifetime(ttl_s), time.time())


def lifetime(ttl_s: float) -> float:
    """A `ttl_s` for `issue_token` that keeps more than *ttl_s*: it truncates `exp` to whole
    seconds, so `ttl_s=1` alone leaves anything from 0 to 1 s, and a test flaky."""
    return float(math.ceil(ttl_s) + 1)


def exp_of(jwt_token: str) -> float:
    """When a token expires (epoch seconds), read without verifying."""
    import jwt  # noqa: PLC0415  # only tests that wait for an expiry need it

    return float(jwt.decode(jwt_token, options={"verify_signature": False})["exp"])


class Harness:
    """A running chat server and ways to reach it."""

    def __init__(self, server: Server, chat: ChatService, store: MessageStore) -> None:
        self.server = server
        self.chat = chat
        self.store = store
        self.clients: list[WsChat] = []
        self.app: App | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws"

    async def connect(self, user: str, *, ttl_s: float = 3600.0, hello: bool = True, **kwargs: Any) -> WsChat:
        jwt_token = token(user, ttl_s)
        ws = await connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {jwt_token}"},
            max_size=None,
            max_queue=None,  # never stop reading: a test may leave events unread
            **kwargs,
        )
        client = WsChat(ws, user)
        client.exp = exp_of(jwt_token)
        self.clients.append(client)
        if hello:
            client.hello = (await client.expect("hello"))["payload"]
            # Wait until the server has loaded (and announced) the user's contacts, so what a
            # test does next cannot race the announcement; anything that arrived meanwhile stays.
            client.backlog = await client.nothing_pending()
        return client


@asynccontextmanager
async def chat_server(
    url: str,
    *,
    chat: ChatConfig | None = None,
    limits: Limits | None = None,
    auth: AuthConfig = AUTH,
    store: MessageStore | None = None,
    depth: int | None = None,
    gather_s: float = 0.0,
    metrics_token: str | None = None,
    webhook: WebhookConfig | None = None,
    metrics_reuse_s: float = 0.0,
    demo: bool = False,
    broker: Any = None,
) -> AsyncIterator[Harness]:
    """A chat server on a free port, composed as `sohbet-server` composes it (`App`), with the
    HTTP API's key `API_KEY`; on exit everything it held must be released.

    The writer keeps as many transactions in flight as the server would on this database
    (*depth* overrides it), so the rules that only matter with two in flight are exercised.
    """
    own_store = store is None
    store = store or await open_store(url)
    config = AppConfig(
        auth=auth,
        chat=chat or ChatConfig(),
        limits=limits or Limits(),
        websocket=WebSocketConfig(subprotocols=("sohbet.v1",)),
        store=StoreConfig(url=url, write_gather_ms=gather_s * 1000),
        metrics_token=metrics_token,
        webhook=webhook or WebhookConfig(),
        metrics_reuse_s=metrics_reuse_s,  # 0: each scrape sees the counters of its moment
        demo=demo,
    )
    app = App(config, store, write_depth=depth, broker=broker)
    await app.start("127.0.0.1", 0)
    harness = Harness(app.server, app.chat, store)
    harness.app = app
    try:
        yield harness
    finally:
        for client in harness.clients:
            await client.ws.close()
        await app.shutdown(3.0)
        if own_store:
            await store.close()
        assert app.server.connections == {}
        assert app.server._sockets == {}
        assert app.chat.session_count == 0
        assert app.chat.hub.connection_count == 0


class WsChat:
    """One user's connection, through the `websockets` client library."""

    _refs = itertools.count(1)

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.hello: dict[str, Any] = {}
        self.exp = 0.0  # when the token it connected with expires (epoch seconds)
        self.backlog: list[dict[str, Any]] = []

    async def send_raw(self, obj: Any) -> None:
        await self.ws.send(orjson.dumps(obj).decode())

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        if self.backlog:
            return self.backlog.pop(0)
        return dict(orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def expect(self, kind: str, *, ref: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of *kind* (and *ref*); others seen on the way wait in the backlog."""
        for i, item in enumerate(self.backlog):
            if item["type"] == kind and (ref is None or item.get("ref") == ref):
                return self.backlog.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            item = dict(orjson.loads(await asyncio.wait_for(self.ws.recv(), max(left, 0.001))))
            if item["type"] == kind and (ref is None or item.get("ref") == ref):
                return item
            self.backlog.append(item)

    async def request(
        self, kind: str, payload: dict[str, Any] | None = None, *, ref: str | None = None
    ) -> dict[str, Any]:
        """Send a request; return the whole reply envelope (an `error` included)."""
        ref = ref or f"q{next(self._refs)}"
        await self.send_raw({"type": kind, "payload": payload or {}, "ref": ref})
        deadline = asyncio.get_running_loop().time() + 5.0
        while True:
            for i, item in enumerate(self.backlog):
                if item.get("ref") == ref:
                    return self.backlog.pop(i)
            left = deadline - asyncio.get_running_loop().time()
            item = dict(orjson.loads(await asyncio.wait_for(self.ws.recv(), max(left, 0.001))))
            if item.get("ref") == ref:
                return item
            self.backlog.append(item)

    async def ok(self, kind: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = await self.request(kind, payload)
        assert reply["type"] != "error", reply
        return dict(reply["payload"])

    async def create(self, *members: str, title: str | None = None) -> int:
        payload: dict[str, Any] = {"members": list(members)}
        if title is not None:
            payload["title"] = title
        return int((await self.ok("conversation:create", payload))["conversation"]["id"])

    async def send(self, conversation_id: int, content: str, client_id: str | None = None) -> dict[str, Any]:
        ack = await self.ok(
            "chat:send",
            {"conversation_id": conversation_id, "content": content, "client_id": client_id or f"c{next(self._refs)}"},
        )
        return dict(ack["message"])

    async def nothing_pending(self) -> list[dict[str, Any]]:
        """Everything delivered to this connection before now, without waiting on a clock.

        A request's reply is written after everything the server wrote to this connection
        before it, so what precedes the reply is exactly what was pending.
        """
        ref = f"probe{next(self._refs)}"
        await self.send_raw({"type": "presence:query", "payload": {"user_ids": []}, "ref": ref})
        got = list(self.backlog)
        self.backlog.clear()
        while True:
            item = dict(orjson.loads(await asyncio.wait_for(self.ws.recv(), 5.0)))
            if item.get("ref") == ref:
                return got
            got.append(item)


def with_chat(**changes: Any) -> ChatConfig:
    return replace(ChatConfig(), **changes)


class HeldRemovals:
    """A real store whose member removals wait until the test lets them through."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def remove_member(self, *args: Any) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await self._store.remove_member(*args)

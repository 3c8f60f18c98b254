"""Three real instances on one Postgres, linked through Redis, behave as one server
(docs/cluster.md): Alice on A, Bob on B, Carol on C."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets

from ..chatkit import WsChat, token
from ..clusterkit import SECRET, Cluster, Instance, cluster
from sohbet.config import AuthConfig

AUTH = AuthConfig(secret=SECRET)
API_KEY = "cluster-test-api-key-of-32-bytes-at-least"


def tok(user: str) -> str:
    return token(user, auth=AUTH)


@asynccontextmanager
async def connect(instance: Instance, user: str) -> AsyncIterator[WsChat]:
    async with websockets.connect(f"{instance.url}?token={tok(user)}", max_queue=None) as ws:
        client = WsChat(ws, user)
        client.hello = (await client.expect("hello"))["payload"]
        yield client


def api(instance: Instance, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{instance.port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture
def three(tmp_path: Path, postgres_database: str) -> Any:
    with cluster(tmp_path, postgres_database, extra=("--api-key", API_KEY)) as c:
        yield c


def test_everything_live_crosses_instances(three: Cluster) -> None:
    a, b, c = three[0], three[1], three[2]

    async def main() -> None:
        async with connect(a, "alice") as alice, connect(b, "bob") as bob, connect(c, "carol") as carol:
            group = await alice.create("bob", "carol", title="trio")
            for other in (bob, carol):
                created = await other.expect("conversation:created")
                assert created["payload"]["conversation"]["id"] == group
            # Bob is online on B: Alice's presence query on A sees him, and Carol's on C.
            assert (await alice.ok("presence:query", {"user_ids": ["bob", "carol"]}))["online"] == ["bob", "carol"]
            # A message from A reaches B and C; one from B reaches A and C.
            m1 = await alice.send(group, "hi from A")
            for other in (bob, carol):
                got = await other.expect("chat:message")
                assert got["payload"]["message"]["seq"] == m1["seq"] == 1
                assert got["payload"]["message"]["content"] == "hi from A"
            await bob.send(group, "hi from B")
            for other in (alice, carol):
                assert (await other.expect("chat:message"))["payload"]["message"]["seq"] == 2
            # Typing from C reaches A and B, not C's own connection.
            await carol.send_raw({"type": "chat:typing", "payload": {"conversation_id": group}})
            for other in (alice, bob):
                typing = await other.expect("chat:typing")
                assert typing["payload"]["user_id"] == "carol"
            # A read on B reaches A and C.
            await bob.send_raw({"type": "chat:read", "payload": {"conversation_id": group, "seq": 2}})
            for other in (alice, carol):
                read = await other.expect("chat:read")
                assert read["payload"] == {"conversation_id": group, "user_id": "bob", "seq": 2}
            # Carol leaves on C: A and B are told, and from then on nothing of the group reaches her.
            await carol.ok("conversation:leave", {"conversation_id": group})
            for other in (alice, bob):
                removed = await other.expect("conversation:member_removed")
                assert removed["payload"] == {"conversation_id": group, "user_id": "carol"}
            await alice.send(group, "after carol left")
            assert (await bob.expect("chat:message"))["payload"]["message"]["seq"] == 3
            # ... and her send on C is refused, though A's cache had her as a member.
            refused = await carol.request(
                "chat:send", {"conversation_id": group, "content": "x", "client_id": "late"}
            )
            assert refused["type"] == "error" and refused["payload"]["code"] == "forbidden"
            # The backend adds her back through B's HTTP API: everyone, Carol on C too, is told.
            status, _ = api(b, "POST", f"/api/conversations/{group}/members", {"user_id": "carol"})
            assert status == 200
            for other in (alice, bob, carol):
                added = await other.expect("conversation:member_added")
                assert added["payload"] == {"conversation_id": group, "user_id": "carol"}
            await alice.send(group, "welcome back")
            got = await carol.expect("chat:message")
            assert got["payload"]["message"]["seq"] == 4
            # Nothing of seq 3 reached her in between: the next message after the marker is 4.
            assert all(m["type"] != "chat:message" for m in carol.backlog)
            # Publish and broadcast through C reach users on A and B.
            status, _ = api(c, "POST", "/api/publish", {"user_ids": ["alice", "bob"], "type": "app:ping", "payload": {"n": 1}})
            assert status == 200
            for other in (alice, bob):
                assert (await other.expect("app:ping"))["payload"] == {"n": 1}
            status, _ = api(a, "POST", "/api/broadcast", {"type": "app:all", "payload": {}})
            assert status == 200
            for other in (alice, bob, carol):
                await other.expect("app:all")

    asyncio.run(main())

"""The HTTP API of a running `sohbet-server` process: the key from each place it can come from,
every endpoint once for each caller it has, and a user's WebSocket seeing what the API did.

The endpoints' rules are tested in depth in test_http_api.py against the same composition in
process; this proves the command line wires it up.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import websockets

from ..chatkit import WsChat
from ..integration.test_ops_hardening import assert_one_clear_line, start_refused, stop
from ..integration.test_processes import SECRET, server_process

KEY = "an-api-key-for-the-process-tests-" + "k" * 8


def user(name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + jwt.encode({"sub": name, "exp": int(time.time()) + 600}, SECRET, "HS256")}


BACKEND = {"Authorization": f"Bearer {KEY}"}


async def every_endpoint(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    async with (
        aiohttp.ClientSession(base) as http,
        websockets.connect(f"ws://127.0.0.1:{port}/ws", additional_headers=user("bob")) as ws,
    ):
        bob = WsChat(ws, "bob")
        await bob.expect("hello")

        async def call(method: str, path: str, status: int, headers: dict[str, str], **kw: Any) -> Any:
            async with http.request(method, path, headers=headers, **kw) as r:
                assert r.status == status, (method, path, r.status, await r.text())
                return await r.json() if r.status != 204 else None

        group = await call("POST", "/api/conversations", 201, BACKEND, json={"members": ["alice", "bob", "carol"]})
        cid = group["conversation"]["id"]
        assert (await bob.expect("conversation:created"))["payload"] == group
        direct = await call("POST", "/api/conversations", 201, user("alice"), json={"members": ["dave"]})
        assert direct["conversation"]["kind"] == "direct"
        listed = await call("GET", "/api/conversations", 200, user("alice"))
        assert {c["id"] for c in listed["conversations"]} == {cid, direct["conversation"]["id"]}
        sent = await call("POST", f"/api/conversations/{cid}/messages", 201, user("alice"), json={"content": "hi"})
        assert (await bob.expect("chat:message"))["payload"] == sent
        by_key = {"sender_id": "carol", "content": "hey", "client_id": "k1"}
        await call("POST", f"/api/conversations/{cid}/messages", 201, BACKEND, json=by_key)
        await call("POST", f"/api/conversations/{cid}/messages", 200, BACKEND, json=by_key)
        for caller in (user("bob"), BACKEND):
            page = await call("GET", f"/api/conversations/{cid}/messages?limit=10", 200, caller)
            assert [m["content"] for m in page["messages"]] == ["hi", "hey"]
        await call("POST", f"/api/conversations/{cid}/members", 200, BACKEND, json={"user_id": "erin"})
        assert (await bob.expect("conversation:member_added"))["payload"]["user_id"] == "erin"
        await call("DELETE", f"/api/conversations/{cid}/members/erin", 204, BACKEND)
        assert (await bob.expect("conversation:member_removed"))["payload"]["user_id"] == "erin"
        event = {"user_ids": ["bob"], "type": "app:ping", "payload": {"n": 1}}
        assert await call("POST", "/api/publish", 200, BACKEND, json=event) == {"delivered_connections": 1}
        assert (await bob.expect("app:ping"))["payload"] == {"n": 1}
        assert await call("POST", "/api/broadcast", 200, BACKEND, json={"type": "app:all"}) == {
            "delivered_connections": 1
        }
        await bob.expect("app:all")
        presence = await call("GET", "/api/users/bob/presence", 200, BACKEND)
        assert presence == {"user_id": "bob", "online": True, "connections": 1}
        assert (await call("GET", "/api/presence", 200, BACKEND))["online"] == ["bob"]
        assert await call("POST", "/api/users/bob/disconnect", 200, BACKEND) == {"closed_connections": 1}
        await ws.wait_closed()
        assert ws.close_code == 4501


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_every_endpoint_of_a_running_server(tmp_path: Path, how: str) -> None:
    key_file = tmp_path / "api.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{KEY}\n".encode())
    os.close(fd)
    args, env = {
        "flag": (["--api-key", KEY], {}),
        "env": ([], {"SOHBET_API_KEY": KEY}),
        "file": (["--api-key-file", str(key_file)], {}),
    }[how]
    env = {**env, "SOHBET_JWT_SECRET": SECRET}
    with server_process("--data-dir", str(tmp_path), *args, cwd=tmp_path, env=env) as (proc, port):
        asyncio.run(every_endpoint(port))
        log = stop(proc)
    assert KEY not in log


def test_an_api_key_that_is_short_or_set_twice_is_refused(tmp_path: Path) -> None:
    env = {"SOHBET_JWT_SECRET": SECRET}
    short = start_refused("--data-dir", str(tmp_path), "--api-key", "k" * 31, cwd=tmp_path, env=env)
    assert_one_clear_line(short, "API key of 31 bytes is shorter than 32")
    key_file = tmp_path / "api.key"
    key_file.write_text(KEY)
    both = start_refused(
        "--data-dir", str(tmp_path), "--api-key-file", str(key_file), cwd=tmp_path, env={**env, "SOHBET_API_KEY": KEY}
    )
    assert_one_clear_line(both, "set the API key or its file, not both")
    missing = start_refused(
        "--data-dir", str(tmp_path), "--api-key-file", str(tmp_path / "nope"), cwd=tmp_path, env=env
    )
    assert_one_clear_line(missing, "cannot read API key file")

"""The log of a whole run of `sohbet-server`: the events that matter are there, in either format,
and no token, key, secret, password or message content is, at any level.

The run goes through everything that handles a secret: tokens in each place a client can put
one (good, forged and expired), the API key right and wrong, the metrics token right and wrong,
messages over the WebSocket and the HTTP API, a token refresh, and a database URL with a
password in it. Then the log is read whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
import pytest
import websockets

from ..chatkit import WsChat
from .test_ops_hardening import stop
from .test_processes import server_process


def secret(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex}-{uuid.uuid4().hex}"


async def traffic(port: int, jwt_secret: str, api_key: str, metrics_token: str, said: list[str]) -> list[str]:
    """Use every secret the way clients do; return every token used (all must stay out of the log)."""
    now = int(time.time())

    def token(user: str, key: str = jwt_secret, exp: int = now + 600) -> str:
        return jwt.encode({"sub": user, "exp": exp}, key, algorithm="HS256")

    good = {u: token(u) for u in ("alice", "bob")}
    forged, expired = token("alice", key=secret("forged")), token("alice", exp=now - 3600)
    url = f"ws://127.0.0.1:{port}/ws"
    refused = 0
    for bad in (forged, expired):
        for how in ("header", "subprotocol", "query"):
            try:
                if how == "header":
                    await websockets.connect(url, additional_headers={"Authorization": f"Bearer {bad}"})
                elif how == "subprotocol":
                    await websockets.connect(url, subprotocols=["sohbet.v1", f"bearer.{bad}"])  # type: ignore[list-item]
                else:
                    await websockets.connect(f"{url}?token={bad}")
            except websockets.InvalidStatus as exc:
                refused += exc.response.status_code == 401
    assert refused == 6
    alice_ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {good['alice']}"})
    bob_ws = await websockets.connect(f"{url}?token={good['bob']}")
    via_protocol = await websockets.connect(url, subprotocols=["sohbet.v1", f"bearer.{good['bob']}"])  # type: ignore[list-item]
    alice, bob, bob2 = WsChat(alice_ws, "alice"), WsChat(bob_ws, "bob"), WsChat(via_protocol, "bob")
    for client in (alice, bob, bob2):
        await client.expect("hello")
    cid = await alice.create("bob", "carol", title="a title")
    for n in range(3):
        content = f"content-{n}-{uuid.uuid4().hex}"
        said.append(content)
        await alice.send(cid, content)
    fresh = token("alice", exp=now + 1200)
    await alice.ok("auth:refresh", {"token": fresh})
    bad_refresh = await alice.request("auth:refresh", {"token": forged})
    assert bad_refresh["payload"]["code"] == "unauthorized"
    await alice.send_raw({"type": "chat:send", "payload": {"conversation_id": cid, "content": "x" * 5000}})
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        for key in (api_key, api_key + "x", secret("wrong-key")):
            async with http.get("/api/presence", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == (200 if key == api_key else 401)
        rest_content = f"rest-content-{uuid.uuid4().hex}"
        said.append(rest_content)
        headers = {"Authorization": f"Bearer {good['bob']}"}
        async with http.post(
            f"/api/conversations/{cid}/messages", json={"content": rest_content}, headers=headers
        ) as r:
            assert r.status == 201
        backend_content = f"backend-content-{uuid.uuid4().hex}"
        said.append(backend_content)
        body = {"sender_id": "carol", "content": backend_content}
        async with http.post(
            f"/api/conversations/{cid}/messages", json=body, headers={"Authorization": f"Bearer {api_key}"}
        ) as r:
            assert r.status == 201
        async with http.get(f"/api/conversations/{cid}/messages?token={good['alice']}", headers=headers) as r:
            assert r.status == 200
        for key in (metrics_token, metrics_token[:-1]):
            async with http.get("/metrics", headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == (200 if key == metrics_token else 401)
    for ws in (alice_ws, bob_ws):
        await ws.close()
    await via_protocol.close(4100, "bye")
    return [*good.values(), forged, expired, fresh]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_whole_runs_log_holds_the_events_and_no_secret(tmp_path: Path, postgres_database: str, fmt: str) -> None:
    jwt_secret, api_key, metrics_token = secret("jwt"), secret("api"), secret("metrics")
    password = secret("db-password")  # trust auth takes any: it must still never be logged
    database_url = postgres_database.replace("postgres@", f"postgres:{password}@")
    key_file = tmp_path / "api.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, api_key.encode())
    os.close(fd)
    env = {"SOHBET_JWT_SECRET": jwt_secret, "SOHBET_METRICS_TOKEN": metrics_token}
    args = ["--database-url", database_url, "--api-key-file", str(key_file), "--log-level", "debug"]
    said: list[str] = []
    with server_process(*args, "--log-format", fmt, cwd=tmp_path, env=env) as (proc, port):
        tokens = asyncio.run(traffic(port, jwt_secret, api_key, metrics_token, said))
        log = stop(proc)
    for kept in [jwt_secret, api_key, metrics_token, password, *tokens, *said]:
        assert kept not in log
        for piece in (kept[:24], kept[-24:]):  # nor a part long enough to be one
            assert piece not in log, piece
    assert "Traceback" not in log
    lines = log.splitlines()
    if fmt == "json":
        events = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all({"ts", "level", "logger", "msg"} <= set(e) for e in events)
    else:
        events = [{"msg": line} for line in lines]
    text = "\n".join(json.dumps(e) for e in events)
    opened = [e for e in events if "connection opened" in e["msg"]]
    closed = [e for e in events if "connection closed" in e["msg"]]
    refused = [e for e in events if "refused upgrade" in e["msg"]]
    assert len(opened) == 3 and len(closed) == 3 and len(refused) == 6
    configuration = next(e for e in events if "configuration" in e["msg"])
    if fmt == "json":
        assert {e["user"] for e in opened} == {"alice", "bob"} and all(isinstance(e["conn"], int) for e in opened)
        assert sorted(e["code"] for e in closed) == [1000, 1000, 4100]
        assert {e["status"] for e in refused} == {401} and all("token" in e["reason"] for e in refused)
        described = configuration["config"]
        assert described["store"]["url"] == database_url.replace(password, "***")
        assert described["auth"]["api_key_set"] is True and described["metrics_token_set"] is True
        assert described["limits"]["max_body_bytes"] == 1 << 20
    else:
        assert any("user='alice'" in e["msg"] and "conn=" in e["msg"] for e in opened)
        assert any("code=4100" in e["msg"] and "reason='bye'" in e["msg"] for e in closed)
        assert all("status=401" in e["msg"] for e in refused)
        assert "'api_key_set': True" in configuration["msg"] and "***" in configuration["msg"]
    assert "shutting down" in text and "stopped" in text

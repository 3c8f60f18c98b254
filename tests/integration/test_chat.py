"""Protocol v1 over real sockets, on SQLite and on Postgres: every request, event, error and limit.

Each test runs once per backend (the `database_url` fixture) and once per event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest
import websockets

from sohbet.ws.config import Limits

from ..chatkit import chat_server, token, with_chat

Run = Callable[[Coroutine[Any, Any, Any]], Any]


# --- storing ----------------------------------------------------------------------------------


def test_sends_that_arrive_while_a_batch_gathers_share_its_transaction(run: Run, database_url: str) -> None:
    """`--write-gather-ms`: two users' sends 20 ms apart, within a 500 ms gathering, are stored
    by one transaction (one batch: one time, consecutive seqs) and both acked."""

    async def main() -> None:
        async with chat_server(database_url, gather_s=0.5) as h:
            alice, bob = await h.connect("alice"), await h.connect("bob")
            cid = await alice.create("bob")
            payload = {"conversation_id": cid, "content": "first", "client_id": "a1"}
            await alice.send_raw({"type": "chat:send", "payload": payload, "ref": "a"})
            await asyncio.sleep(0.02)
            payload = {"conversation_id": cid, "content": "second", "client_id": "b1"}
            await bob.send_raw({"type": "chat:send", "payload": payload, "ref": "b"})
            first = (await alice.expect("chat:ack", ref="a"))["payload"]["message"]
            second = (await bob.expect("chat:ack", ref="b"))["payload"]["message"]
            assert (first["seq"], second["seq"]) == (1, 2)
            assert first["created_at"] == second["created_at"]  # one batch, one time

    run(main())


# --- connecting --------------------------------------------------------------------------------


def test_hello_and_the_three_ways_to_authenticate(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            by_header = await h.connect("alice")
            assert by_header.hello["user_id"] == "alice"
            assert by_header.hello["protocol"] == 1
            assert by_header.hello["limits"] == {
                "max_message_bytes": 65536,
                "max_content_chars": 4000,
                "send_rate_per_s": 10.0,
                "send_burst": 30,
            }
            assert by_header.hello["server_time"].endswith("Z") and len(by_header.hello["server_time"]) == 24
            async with websockets.connect(
                h.url, subprotocols=["sohbet.v1", f"bearer.{token('bob')}"]
            ) as by_subprotocol:
                assert by_subprotocol.subprotocol == "sohbet.v1"  # the bearer entry is never echoed
                assert orjson.loads(await by_subprotocol.recv())["payload"]["user_id"] == "bob"
            async with websockets.connect(f"{h.url}?token={token('carol')}") as by_query:
                hello = orjson.loads(await by_query.recv())["payload"]
                assert hello["user_id"] == "carol"
                assert hello["connection_id"] != by_header.hello["connection_id"]

    run(main())


@pytest.mark.parametrize(
    ("headers", "query", "subprotocols"),
    [
        ({}, "", []),
        ({"Authorization": "Bearer not-a-jwt"}, "", []),
        ({"Authorization": "Basic abc"}, "", []),
        ({"Authorization": "Bearer expired"}, "", []),
        ({"Authorization": "Bearer bad"}, "?token=good", []),  # no fallback to the next source
        ({}, "?token=none-alg", []),
        ({}, "?token=wrong-secret", []),
        ({}, "?token=no-sub", []),
    ],
    ids=["missing", "garbage", "basic", "expired", "no-fallback", "alg-none", "wrong-key", "no-sub"],
)
def test_bad_tokens_get_401(
    run: Run, database_url: str, headers: dict[str, str], query: str, subprotocols: list[str]
) -> None:
    import jwt  # noqa: PLC0415  # building deliberately bad tokens

    from ..chatkit import SECRET  # noqa: PLC0415

    forged = {
        "expired": token("alice", ttl_s=-60),
        "good": token("alice"),
        "none-alg": jwt.encode({"sub": "alice", "exp": 2**40}, None, algorithm="none"),
        "wrong-secret": jwt.encode(
            {"sub": "alice", "exp": 2**40}, "another-secret-of-thirty-two-bytes!!", algorithm="HS256"
        ),
        "no-sub": jwt.encode({"exp": 2**40}, SECRET, algorithm="HS256"),
    }

    def fill(text: str) -> str:
        for name, value in forged.items():
            text = text.replace(f"Bearer {name}", f"Bearer {value}").replace(f"token={name}", f"token={value}")
        return text

    async def main() -> None:
        async with chat_server(database_url) as h:
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(
                    h.url + fill(query), additional_headers={k: fill(v) for k, v in headers.items()}
                )
            response = info.value.response
            assert response.status_code == 401
            assert orjson.loads(response.body)["error"]["code"] == "unauthorized"

    run(main())


def test_rs256_rejects_an_hs256_token(run: Run, database_url: str) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    from sohbet.config import AuthConfig  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    auth = AuthConfig(algorithm="RS256", public_keys=((None, public.decode()),))

    async def main() -> None:
        import jwt  # noqa: PLC0415

        async with chat_server(database_url, auth=auth) as h:
            good = jwt.encode({"sub": "alice", "exp": 2**40}, key, algorithm="RS256")
            async with websockets.connect(h.url, additional_headers={"Authorization": f"Bearer {good}"}) as ws:
                assert orjson.loads(await ws.recv())["payload"]["user_id"] == "alice"
            # The classic confusion attack: the public key used as an HMAC secret.
            # pyjwt refuses PEM HMAC keys: sign by hand.
            import base64  # noqa: PLC0415
            import hashlib  # noqa: PLC0415
            import hmac  # noqa: PLC0415

            def b64(raw: bytes) -> bytes:
                return base64.urlsafe_b64encode(raw).rstrip(b"=")

            signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(b'{"sub":"alice","exp":1099511627776}')
            hs = signing + b"." + b64(hmac.new(public, signing, hashlib.sha256).digest())
            with pytest.raises(websockets.InvalidStatus) as info:
                await websockets.connect(h.url, additional_headers={"Authorization": f"Bearer {hs.decode()}"})
            assert info.value.response.status_code == 401

    run(main())


def test_connection_cap_per_user(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(max_connections_per_user=2)) as h:
            first = await h.connect("alice")
            await h.connect("alice")
            third = await h.connect("alice", hello=False)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await third.ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008
            assert await first.nothing_pending() == []  # the older ones stay open

    run(main())


def test_token_expiry_closes_with_4001_and_refresh_extends(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            short = await h.connect("alice", ttl_s=1.0)  # expires in 1-3 s
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(short.ws.recv(), 5.0)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4001
            refreshed = await h.connect("alice", ttl_s=1.0)
            reply = await refreshed.ok("auth:refresh", {"token": token("alice", ttl_s=60)})
            assert reply["exp"] > 0
            other = await refreshed.request("auth:refresh", {"token": token("mallory", ttl_s=60)})
            assert other["payload"]["code"] == "unauthorized"
            bad = await refreshed.request("auth:refresh", {"token": "garbage"})
            assert bad["payload"]["code"] == "unauthorized"
            # Past the first token's exp, and a tick of the server's expiry check after it:
            # the refreshed token holds.
            await asyncio.sleep(max(0.0, refreshed.exp - time.time()) + 1.0)
            assert await refreshed.nothing_pending() == []

    run(main())


# --- messages -----------------------------------------------------------------------------------


def test_send_ack_and_fan_out_to_every_device(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            alice_phone = await h.connect("alice")
            bob = await h.connect("bob")
            carol = await h.connect("carol")  # not a member
            cid = await alice.create("bob", "dave", title="plans")
            reply = await alice.request(
                "chat:send", {"conversation_id": cid, "content": "héllo 👋", "client_id": "m1"}, ref="r-1"
            )
            assert reply["type"] == "chat:ack" and reply["ref"] == "r-1"
            message = reply["payload"]["message"]
            assert reply["payload"]["client_id"] == "m1"
            assert message["seq"] == 1 and message["sender_id"] == "alice" and message["content"] == "héllo 👋"
            assert set(message) == {"id", "conversation_id", "seq", "sender_id", "content", "client_id", "created_at"}
            for device in (alice_phone, bob):
                event = await device.expect("chat:message")
                assert event["payload"]["message"] == message
                assert "ref" not in event
            assert [e["type"] for e in await carol.nothing_pending()] == []  # not a byte of it
            assert [e["type"] for e in await alice.nothing_pending()] == []  # the sender's ack only

    run(main())


def test_idempotent_retries(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob")
            other = await alice.create("bob", "carol")
            first = await alice.send(cid, "once", client_id="same")
            again = await alice.send(cid, "different text", client_id="same")
            elsewhere = await alice.send(other, "another conversation", client_id="same")
            assert first == again == elsewhere  # the original, whatever the new content or place
            assert [
                e["payload"]["message"]["seq"] for e in await bob.nothing_pending() if e["type"] == "chat:message"
            ] == [1]
            history = await bob.ok("chat:history", {"conversation_id": cid})
            assert [m["content"] for m in history["messages"]] == ["once"]
            assert (await bob.ok("chat:history", {"conversation_id": other}))["messages"] == []

    run(main())


def test_seq_order_under_twenty_concurrent_senders(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0)) as h:
            users = [f"u{i}" for i in range(20)]
            clients = [await h.connect(u) for u in users]
            cid = await clients[0].create(*users[1:])
            watcher = await h.connect("u0")

            async def burst(client: Any) -> list[int]:
                return [(await client.send(cid, f"{client.user} {n}"))["seq"] for n in range(10)]

            acked = await asyncio.gather(*(burst(c) for c in clients))
            seqs = sorted(s for per in acked for s in per)
            assert seqs == list(range(1, 201))  # no gap, no duplicate
            seen = [(await watcher.expect("chat:message"))["payload"]["message"]["seq"] for _ in range(200)]
            assert seen == list(range(1, 201))  # delivered in seq order

    run(main())


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": "1", "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": True, "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": 2**53, "content": "x", "client_id": "c"}, "bad_request"),
        ({"conversation_id": "CID", "content": "", "client_id": "c"}, "bad_request"),
        ({"conversation_id": "CID", "content": 5, "client_id": "c"}, "bad_request"),
        ({"conversation_id": "CID", "content": "x"}, "bad_request"),
        ({"conversation_id": "CID", "content": "x", "client_id": "c" * 129}, "bad_request"),
        ({"conversation_id": "CID", "content": "x" * 4001, "client_id": "c"}, "too_large"),
        ({"conversation_id": "CID", "content": "😀" * 4000, "client_id": "c"}, None),
        ({"conversation_id": 999999, "content": "x", "client_id": "c"}, "forbidden"),
        ({"conversation_id": "OTHER", "content": "x", "client_id": "c"}, "forbidden"),
    ],
    ids=[
        "no-conversation",
        "string-id",
        "bool-id",
        "id-too-big",
        "empty",
        "content-not-string",
        "no-client-id",
        "client-id-too-long",
        "4001-chars",
        "4000-emoji-ok",
        "no-such-conversation",
        "not-a-member",
    ],
)
def test_send_validation_order(run: Run, database_url: str, payload: dict[str, Any], code: str | None) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            others = await (await h.connect("bob")).create("carol")
            filled = {k: (cid if v == "CID" else others if v == "OTHER" else v) for k, v in payload.items()}
            reply = await alice.request("chat:send", filled, ref="v")
            if code is None:
                assert reply["type"] == "chat:ack"
            else:
                assert (reply["type"], reply["payload"]["code"], reply["ref"]) == ("error", code, "v")

    run(main())


def test_malformed_envelopes(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            for raw in [b"not json", b"[1,2]", b'"text"', b'{"payload":{}}', b'{"type":7}']:
                await alice.ws.send(raw.decode())
                reply = await alice.recv()
                assert reply["type"] == "error" and reply["payload"]["code"] == "bad_request"
                assert "ref" not in reply
            for obj, code in [
                ({"type": "nope", "ref": "a"}, "bad_request"),
                ({"type": "conversation:list", "payload": [], "ref": "b"}, "bad_request"),
                ({"type": "conversation:list", "payload": None, "ref": "c"}, None),  # treated as {}
                ({"type": "conversation:list", "ref": "d"}, None),
            ]:
                await alice.send_raw(obj)
                reply = await alice.recv()
                assert reply["ref"] == obj["ref"]
                assert (reply["payload"].get("code") if reply["type"] == "error" else None) == code
            for bad_ref in ["", "r" * 65, 7]:
                await alice.send_raw({"type": "conversation:list", "ref": bad_ref})
                reply = await alice.recv()
                assert reply["payload"]["code"] == "bad_request" and "ref" not in reply

    run(main())


def test_binary_frames_close_with_1003(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            await alice.ws.send(b"\x00\x01")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await alice.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1003

    run(main())


def test_too_many_errors_close_with_1008(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            for _ in range(20):
                assert (await alice.request("nope"))["type"] == "error"
            await alice.send_raw({"type": "nope"})
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await alice.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008

    run(main())


def test_rate_limit_per_user_across_connections(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=2, send_burst=3)) as h:
            laptop = await h.connect("alice")
            phone = await h.connect("alice")
            cid = await laptop.create("bob")
            for i, device in enumerate([laptop, phone, laptop]):
                await device.send(cid, f"m{i}", client_id=f"k{i}")
            limited = await phone.request("chat:send", {"conversation_id": cid, "content": "x", "client_id": "k9"})
            assert limited["payload"]["code"] == "rate_limited"
            assert 0 < limited["payload"]["retry_after_ms"] <= 500
            replay = await phone.request("chat:send", {"conversation_id": cid, "content": "x", "client_id": "k0"})
            assert replay["type"] == "chat:ack"  # replays spend no token and are never limited
            refused = await phone.request("chat:send", {"conversation_id": cid, "content": "", "client_id": "k8"})
            assert refused["payload"]["code"] == "bad_request"  # rejected: spends no token either
            await asyncio.sleep(limited["payload"]["retry_after_ms"] / 1000 + 0.05)
            assert (await phone.send(cid, "after waiting", client_id="k10"))["seq"] == 4

    run(main())


def test_frame_rate_limit_closes_with_1008(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, limits=Limits(max_frames_per_10s=10)) as h:
            alice = await h.connect("alice")
            for _ in range(11):
                await alice.send_raw({"type": "conversation:list"})
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await alice.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1008

    run(main())


def test_message_over_the_size_limit_closes_with_1009(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            await alice.ws.send("x" * 70_000)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await alice.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    run(main())


# --- typing, reads, history ----------------------------------------------------------------------


def test_typing_is_forwarded_and_throttled(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(typing_interval_s=0.3)) as h:
            alice = await h.connect("alice")
            alice_phone = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob")
            await bob.expect("conversation:created")
            await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": cid}})
            notice = await bob.expect("chat:typing")
            assert notice["payload"] == {"conversation_id": cid, "user_id": "alice", "expires_in_ms": 6000}
            await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": cid}})
            assert await bob.nothing_pending() == []  # throttled: within the interval
            await asyncio.sleep(0.6)  # twice the interval: a loaded machine still lands past it
            await alice.send_raw({"type": "chat:typing", "payload": {"conversation_id": cid}})
            await bob.expect("chat:typing")  # re-announced once the interval has passed
            assert [e["type"] for e in await alice_phone.nothing_pending()] == ["conversation:created"]
            assert await alice.nothing_pending() == []  # no reply to typing
            forbidden = await alice.request("chat:typing", {"conversation_id": 999})
            assert forbidden["payload"]["code"] == "forbidden"

    run(main())


def test_read_receipts(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            bob_phone = await h.connect("bob")
            cid = await alice.create("bob")
            for i in range(3):
                await alice.send(cid, f"m{i}")
            await bob.send_raw({"type": "chat:read", "payload": {"conversation_id": cid, "seq": 99}})
            receipt = await alice.expect("chat:read")
            assert receipt["payload"] == {"conversation_id": cid, "user_id": "bob", "seq": 3}  # clamped
            assert (await bob_phone.expect("chat:read"))["payload"]["seq"] == 3  # the reader's other devices
            await bob.send_raw({"type": "chat:read", "payload": {"conversation_id": cid, "seq": 2}})  # backwards
            await alice.send(cid, "m3")
            # The marker: bob's reads run in order, so the receipt of this one comes after any of
            # the backward one, on the connections that would get it (alice's, bob's phone).
            await bob.send_raw({"type": "chat:read", "payload": {"conversation_id": cid, "seq": 4}})
            for watcher in (alice, bob_phone):
                assert (await watcher.expect("chat:read"))["payload"]["seq"] == 4  # nothing for seq 2
            # Reads are answered in order, and so is this probe: the reader's own connection got none.
            assert [e for e in await bob.nothing_pending() if e["type"] == "chat:read"] == []
            listed = await alice.ok("conversation:list")
            assert listed["conversations"][0]["unread"] == 0  # her own messages never count
            listed = await bob.ok("conversation:list")
            assert listed["conversations"][0]["unread"] == 0

    run(main())


def test_history_pages_backwards_in_ascending_order(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0)) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            for i in range(1, 8):
                await alice.send(cid, f"m{i}")
            page = await alice.ok("chat:history", {"conversation_id": cid, "limit": 3})
            assert [m["seq"] for m in page["messages"]] == [5, 6, 7] and page["has_more"]
            page = await alice.ok("chat:history", {"conversation_id": cid, "limit": 3, "before_seq": 5})
            assert [m["seq"] for m in page["messages"]] == [2, 3, 4] and page["has_more"]
            page = await alice.ok("chat:history", {"conversation_id": cid, "before_seq": 2})
            assert [m["seq"] for m in page["messages"]] == [1] and not page["has_more"]
            default = await alice.ok("chat:history", {"conversation_id": cid})
            assert len(default["messages"]) == 7
            for bad in [{"conversation_id": cid, "limit": 0}, {"conversation_id": cid, "limit": 101}]:
                assert (await alice.request("chat:history", bad))["payload"]["code"] == "bad_request"
            outsider = await h.connect("mallory")
            assert (await outsider.request("chat:history", {"conversation_id": cid}))["payload"]["code"] == "forbidden"

    run(main())


# --- sync -----------------------------------------------------------------------------------------


def test_sync_after_a_disconnect_loses_and_repeats_nothing(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0)) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob")
            quiet = await alice.create("bob", "carol")
            await alice.send(cid, "seen live")
            seen = (await bob.expect("chat:message"))["payload"]["message"]["seq"]
            await bob.ws.close()
            for i in range(5):
                await alice.send(cid, f"missed {i}")
            await alice.send(quiet, "in the other one")
            bob = await h.connect("bob")
            done = await bob.request("sync", {"cursors": {str(cid): seen, "999": 0}}, ref="s")
            replayed = [e for e in bob.backlog if e["type"] == "chat:message"]
            assert [(e["payload"]["message"]["conversation_id"], e["payload"]["message"]["seq"]) for e in replayed] == [
                (cid, 2), (cid, 3), (cid, 4), (cid, 5), (cid, 6), (quiet, 1),
            ]  # fmt: skip
            assert all("ref" not in e for e in replayed)
            assert done["type"] == "sync:done" and done["ref"] == "s"
            assert done["payload"] == {
                "conversations": {str(cid): 6, str(quiet): 1},
                "forbidden": [999],
                "complete": True,
            }

    run(main())


def test_sync_in_rounds_when_over_the_limits(run: Run, database_url: str) -> None:
    async def main() -> None:
        config = with_chat(send_rate_per_s=0, sync_per_conversation=4, sync_per_call=6, sync_unnamed=2)
        async with chat_server(database_url, chat=config) as h:
            alice = await h.connect("alice")
            a = await alice.create("bob")
            b = await alice.create("bob", "carol")
            c = await alice.create("bob", "dave")
            for cid in (a, b, c):
                for i in range(5):
                    await alice.send(cid, f"{cid}-{i}")
            bob = await h.connect("bob")
            cursors = {str(a): 0, str(b): 0}
            got: list[tuple[int, int]] = []
            for _ in range(5):
                bob.backlog.clear()
                done = (await bob.request("sync", {"cursors": cursors}))["payload"]
                got += [
                    (e["payload"]["message"]["conversation_id"], e["payload"]["message"]["seq"])
                    for e in bob.backlog
                    if e["type"] == "chat:message" and e["payload"]["message"]["conversation_id"] != c
                ]
                cursors = {k: v for k, v in done["conversations"].items() if k != str(c)}
                if done["complete"]:
                    break
            assert sorted(got) == [(a, s) for s in range(1, 6)] + [(b, s) for s in range(1, 6)]
            assert done["complete"] and done["conversations"][str(c)] == 5

    run(main())


# --- conversations --------------------------------------------------------------------------------


def test_create_direct_and_group(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            alice_phone = await h.connect("alice")
            bob = await h.connect("bob")
            direct = await alice.ok("conversation:create", {"members": ["bob", "bob", "alice"], "title": "ignored"})
            conversation = direct["conversation"]
            assert conversation == {
                "id": conversation["id"], "kind": "direct", "title": None, "member_count": 2,
                "members": ["alice", "bob"], "last_seq": 0,
            }  # fmt: skip
            assert (await bob.expect("conversation:created"))["payload"] == direct
            assert (await alice_phone.expect("conversation:created"))["payload"] == direct
            again = await bob.ok("conversation:create", {"members": ["alice"]})
            assert again["conversation"]["id"] == conversation["id"]  # unique per pair ...
            assert await alice.nothing_pending() == []  # ... and only the asker hears of it
            group = (await alice.ok("conversation:create", {"members": ["bob", "carol"], "title": "trio"}))[
                "conversation"
            ]
            assert (group["kind"], group["title"], group["member_count"]) == ("group", "trio", 3)
            for bad, code in [
                ({"members": []}, "bad_request"),
                ({"members": ["alice"]}, "bad_request"),
                ({"members": "bob"}, "bad_request"),
                ({"members": [7]}, "bad_request"),
                ({"members": ["x" * 129]}, "bad_request"),
            ]:
                assert (await alice.request("conversation:create", bad))["payload"]["code"] == code

    run(main())


def test_group_size_limit_and_member_paging(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(max_group_members=150)) as h:
            alice = await h.connect("alice")
            too_big = await alice.request("conversation:create", {"members": [f"u{i:03}" for i in range(150)]})
            assert too_big["payload"]["code"] == "too_large"
            members = [f"u{i:03}" for i in range(149)]
            created = (await alice.ok("conversation:create", {"members": members}))["conversation"]
            assert created["member_count"] == 150 and len(created["members"]) == 100
            seen: list[str] = []
            cursor = None
            while True:
                payload: dict[str, Any] = {"conversation_id": created["id"], "limit": 60}
                if cursor:
                    payload["cursor"] = cursor
                page = await alice.ok("conversation:members", payload)
                seen += page["members"]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == sorted([*members, "alice"])

    run(main())


def test_list_newest_activity_first_with_unread(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            # Created oldest first by the order expected last: a tie of milliseconds (a send
            # stored in the millisecond another conversation was created) goes to the higher id.
            third = await alice.create("bob", "dave")
            first = await alice.create("bob")
            second = await alice.create("bob", "carol")
            await alice.send(first, "newest activity")
            await alice.send(first, "again")
            await bob.send(second, "from bob")
            page = await alice.ok("conversation:list", {"limit": 2})
            assert [c["id"] for c in page["conversations"]] == [second, first]
            assert [c["unread"] for c in page["conversations"]] == [1, 0]
            rest = await alice.ok("conversation:list", {"limit": 2, "cursor": page["next_cursor"]})
            assert [c["id"] for c in rest["conversations"]] == [third] and rest["next_cursor"] is None
            bad = await alice.request("conversation:list", {"cursor": "not-a-cursor"})
            assert bad["payload"]["code"] == "bad_request"

    run(main())


def test_leave(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            bob_phone = await h.connect("bob")
            carol = await h.connect("carol")
            cid = await alice.create("bob", "carol")
            reply = await bob.request("conversation:leave", {"conversation_id": cid}, ref="bye")
            assert (reply["type"], reply["payload"], reply["ref"]) == (
                "conversation:left",
                {"conversation_id": cid},
                "bye",
            )
            for other in (alice, carol, bob_phone):
                removed = await other.expect("conversation:member_removed")
                assert removed["payload"] == {"conversation_id": cid, "user_id": "bob"}
            await alice.send(cid, "after bob left")
            assert [e["type"] for e in await bob.nothing_pending() if e["type"] == "chat:message"] == []
            assert [e["type"] for e in await bob_phone.nothing_pending() if e["type"] == "chat:message"] == []
            assert (await bob.request("chat:history", {"conversation_id": cid}))["payload"]["code"] == "forbidden"

    run(main())


# --- presence -------------------------------------------------------------------------------------


def test_presence_online_offline_with_grace(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(presence_grace_s=1.0)) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            await bob.nothing_pending()  # bob's arrival has been announced (to nobody yet)
            await alice.create("bob")
            await h.connect("mallory")  # no shared conversation: sees nothing
            bob_quick = await h.connect("bob")  # a second device: bob was already online
            assert [e["type"] for e in await alice.nothing_pending()] == []
            await bob.ws.close()
            await bob_quick.ws.close()
            back = await h.connect("bob")  # back within the grace period: no flap
            assert [e["type"] for e in await alice.nothing_pending()] == []
            await back.ws.close()
            started = asyncio.get_running_loop().time()
            offline = await alice.expect("user:offline", timeout=4.0)
            assert offline["payload"] == {"user_id": "bob"}
            assert asyncio.get_running_loop().time() - started <= 1.0 + 1.0 + 0.5  # grace + 1 s
            await h.connect("bob")
            assert (await alice.expect("user:online"))["payload"] == {"user_id": "bob"}

    run(main())


def test_presence_query_sees_only_contacts(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            await h.connect("bob")
            await h.connect("mallory")
            await alice.create("bob")
            state = await alice.ok("presence:query", {"user_ids": ["bob", "mallory", "nobody", "bob"]})
            assert state == {"online": ["bob"]}
            too_many = await alice.request("presence:query", {"user_ids": [f"u{i}" for i in range(501)]})
            assert too_many["payload"]["code"] == "too_large"

    run(main())


# --- the Python client ---------------------------------------------------------------------------


def test_python_client_reconnect_and_sync(run: Run, database_url: str) -> None:
    from sohbet.client import ChatClient, ChatError  # noqa: PLC0415

    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0)) as h:
            alice = await ChatClient.connect(h.url, token("alice"))
            bob = await ChatClient.connect(h.url, token("bob"))
            assert bob.hello["user_id"] == "bob"
            cid = (await alice.request("conversation:create", {"members": ["bob"]}))["conversation"]["id"]
            sent = await alice.send("first", cid)
            assert (await bob.next_event("chat:message"))["payload"]["message"] == sent
            await bob.close()
            for i in range(3):
                await alice.send(f"missed {i}", cid)
            done = await bob.reconnect()
            assert done["complete"]
            replayed = [(await bob.next_event("chat:message"))["payload"]["message"]["content"] for _ in range(3)]
            assert replayed == ["missed 0", "missed 1", "missed 2"]
            assert bob.cursors[cid] == 4
            with pytest.raises(ChatError) as info:
                await bob.request("chat:history", {"conversation_id": 999})
            assert info.value.code == "forbidden"
            await alice.close()
            await bob.close()

    run(main())


def test_healthz_and_readyz(run: Run, database_url: str) -> None:
    from .conftest import http  # noqa: PLC0415

    async def main() -> None:
        async with chat_server(database_url) as h:
            status, _, body = await http(
                h.server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert (status, orjson.loads(body)) == (200, {"status": "ok"})
            status, _, _ = await http(h.server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 200
            status, headers, _ = await http(h.server.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 426 and headers["upgrade"] == "websocket"

    run(main())


def test_storage_down_means_unavailable_and_a_safe_retry(run: Run, postgres_database: str) -> None:
    """Postgres really refuses connections for a while; nothing is stored, a retry later is."""

    from ..conftest import pg_admin as admin  # noqa: PLC0415

    name = postgres_database.rsplit("/", 1)[1]

    async def main() -> None:
        async with chat_server(postgres_database) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                down = await alice.request("chat:send", {"conversation_id": cid, "content": "hi", "client_id": "k1"})
                assert down["type"] == "error" and down["payload"]["code"] == "unavailable"
                history = await alice.request("chat:history", {"conversation_id": cid})
                assert history["payload"]["code"] == "unavailable"
            finally:
                await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            retried = await alice.send(cid, "hi", client_id="k1")
            assert retried["seq"] == 1  # the failed attempt stored nothing and burnt no seq
            assert await h.store.find_message("alice", "k1") is not None  # type: ignore[arg-type]

    run(main())


def test_pipelined_senders_are_delivered_in_seq_order(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0)) as h:
            users = [f"p{i}" for i in range(8)]
            senders = [await h.connect(u) for u in users]
            cid = await senders[0].create(*users[1:])
            watcher = await h.connect("p0")

            async def pipeline(client: Any) -> None:
                for n in range(40):  # no waiting for acks: many batches in flight at once
                    key = f"{client.user}-{n}"
                    payload = {"conversation_id": cid, "content": "x", "client_id": key}
                    await client.send_raw({"type": "chat:send", "ref": key, "payload": payload})

            await asyncio.gather(*(pipeline(c) for c in senders))
            seen = [(await watcher.expect("chat:message"))["payload"]["message"]["seq"] for _ in range(320)]
            assert seen == list(range(1, 321))  # strictly in seq order, no gap

    run(main())


def test_content_with_nul_is_a_bad_request_not_a_poisoned_batch(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            for payload in [
                {"conversation_id": cid, "content": "a\u0000b", "client_id": "n1"},
                {"conversation_id": cid, "content": "ok", "client_id": "n\u00002"},
            ]:
                assert (await alice.request("chat:send", payload))["payload"]["code"] == "bad_request"
            create = await alice.request("conversation:create", {"members": ["x\u0000y"]})
            assert create["payload"]["code"] == "bad_request"
            assert (await alice.send(cid, "fine"))["seq"] == 1

    run(main())


def test_leave_racing_sends_stores_nothing_after_it(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0)) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob", "carol")
            for n in range(20):  # at most 20 forbidden answers: more would close with 1008
                payload = {"conversation_id": cid, "content": f"m{n}", "client_id": f"s{n}"}
                await bob.send_raw({"type": "chat:send", "ref": f"s{n}", "payload": payload})
                if n == 10:
                    await bob.send_raw(
                        {"type": "conversation:leave", "ref": "bye", "payload": {"conversation_id": cid}}
                    )
            outcomes: dict[str, str] = {}
            while len(outcomes) < 21:
                reply = await bob.recv()
                if reply.get("ref"):
                    outcomes[reply["ref"]] = reply["type"] if reply["type"] != "error" else reply["payload"]["code"]
            assert outcomes["bye"] == "conversation:left"
            acked = [r for r, kind in outcomes.items() if kind == "chat:ack"]
            assert all(kind in ("chat:ack", "forbidden") for r, kind in outcomes.items() if r != "bye")
            history = await alice.ok("chat:history", {"conversation_id": cid, "limit": 100})
            assert sorted(m["client_id"] for m in history["messages"]) == sorted(acked)  # nothing unacked stored

    run(main())


def test_a_direct_conversation_can_be_rejoined(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob")
            await bob.ok("conversation:leave", {"conversation_id": cid})
            again = (await bob.ok("conversation:create", {"members": ["alice"]}))["conversation"]
            assert again["id"] == cid and again["member_count"] == 2 and again["members"] == ["alice", "bob"]
            await bob.send(cid, "back again")
            assert (await alice.expect("chat:message"))["payload"]["message"]["content"] == "back again"
            await alice.send(cid, "welcome back")
            assert (await bob.expect("chat:message"))["payload"]["message"]["content"] == "welcome back"

    run(main())


def test_sync_edge_cases(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0, sync_per_call=5)) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            quiet = await alice.create("bob", "carol")
            for i in range(5):
                await alice.send(cid, f"m{i}")
            bob = await h.connect("bob")
            done = await bob.request("sync", {"cursors": {str(cid): 0, str(quiet): 0}})
            assert done["payload"]["complete"] is True  # the budget ran out exactly: nothing left
            ahead = await bob.request("sync", {"cursors": {str(cid): 99}})
            assert ahead["payload"]["conversations"][str(cid)] == 5  # a cursor past the end
            odd = await bob.request("sync", {"cursors": {"\u00b2": 0}})
            assert odd["payload"]["code"] == "bad_request"

    run(main())

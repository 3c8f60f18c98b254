"""sohbet's Python client over real sockets: refused and broken handshakes, pings, closes, sync.

Against the real chat server where the server is right, and against a scripted raw server (an
asyncio stream server writing exact bytes) where the test needs the server to misbehave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
import pytest

from sohbet.client import ChatClient, ChatError, ConnectionClosed
from sohbet.ws.codes import Opcode
from sohbet.ws.frames import FrameParser, accept_key, build_close, build_frame

from ..chatkit import chat_server, token, with_chat

Run = Callable[[Coroutine[Any, Any, Any]], Any]
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def scripted(script: Script) -> tuple[asyncio.Server, str]:
    """A raw server on a free loopback port that runs *script* for each connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/ws"


async def read_key(reader: asyncio.StreamReader) -> str:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = (line.partition(":") for line in head.split("\r\n")[1:] if line)
    return next(v.strip() for k, _, v in lines if k.strip().lower() == "sec-websocket-key")


def switching(key: str, accept: str | None = None) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept or accept_key(key)}\r\nSec-WebSocket-Protocol: sohbet.v1\r\n\r\n"
    ).encode()


def event(kind: str, payload: dict[str, Any], ref: str | None = None) -> bytes:
    body: dict[str, Any] = {"type": kind, "payload": payload}
    if ref is not None:
        body["ref"] = ref
    return build_frame(Opcode.TEXT, orjson.dumps(body))


HELLO = event("hello", {"user_id": "alice", "connection_id": "c1", "server_time": 0})


def test_a_refused_handshake_raises_with_the_status(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            with pytest.raises(ConnectionClosed, match=r"handshake refused: HTTP/1\.1 401"):
                await ChatClient.connect(h.url, "not-a-jwt")
            with pytest.raises(ValueError, match="only ws://"):
                await ChatClient.connect(h.url.replace("ws://", "wss://"), token("alice"))

    run(main())


def test_an_answer_for_another_key_is_refused(run: Run) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_key(reader)
        writer.write(switching("", accept=accept_key("someone else's key")))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            with pytest.raises(ConnectionClosed, match="does not match our key"):
                await ChatClient.connect(url, token("alice"))

    run(main())


def test_a_connection_lost_during_the_handshake_says_so(run: Run) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_key(reader)
        writer.write(b"HTTP/1.1 101 Switching")  # half a status line, then the socket closes

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            with pytest.raises(ConnectionClosed, match="lost during the handshake"):
                await ChatClient.connect(url, token("alice"))

    run(main())


def test_pings_are_answered_and_a_server_close_ends_the_event_stream(run: Run) -> None:
    pongs: asyncio.Queue[bytes] = asyncio.Queue()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        answer = switching(key) + HELLO
        writer.write(answer[:20])  # the head in pieces, the hello in the same read as its end
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer[20:])
        writer.write(build_frame(Opcode.PING, b"are you there"))
        writer.write(event("user:online", {"user_id": "bob"}))
        await writer.drain()
        parser = FrameParser()  # the server role: it unmasks what the client sent
        frames: list[Any] = []
        while not frames:
            frames = parser.feed(await reader.read(65536))
        pongs.put_nowait(frames[0].payload if frames[0].opcode == Opcode.PONG else b"not a pong")
        writer.write(build_close(4001, "token expired"))
        await writer.drain()
        while not any(f.opcode == Opcode.CLOSE for f in parser.feed(await reader.read(65536))):
            pass  # the client's echo of our close; then the server closes TCP, as RFC 6455 says

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            client = await ChatClient.connect(url, token("alice"))
            assert client.hello["user_id"] == "alice"
            assert client.close_code is None  # open
            seen = [e async for e in client.events()]
            assert [e["type"] for e in seen] == ["user:online"]  # then the close ended the stream
            assert pongs.get_nowait() == b"are you there"
            assert client.close_code == 4001
            with pytest.raises(ConnectionClosed) as info:
                await client.next_event()  # the close stays visible to later calls
            assert info.value.code == 4001
            with pytest.raises(ConnectionClosed, match="not connected"):
                await client.request("presence:query", {"user_ids": ["bob"]})
            await client.close()
            with pytest.raises(ConnectionClosed, match="not connected"):
                client.notify("chat:typing", {"conversation_id": 1})

    run(main())


def test_sync_is_called_again_until_the_server_says_complete(run: Run, database_url: str) -> None:
    async def main() -> None:
        chat = with_chat(send_rate_per_s=0, sync_per_conversation=2, sync_per_call=2)
        async with chat_server(database_url, chat=chat) as h:
            alice = await ChatClient.connect(h.url, token("alice"))
            bob = await ChatClient.connect(h.url, token("bob"))
            cid = (await alice.request("conversation:create", {"members": ["bob"]}))["conversation"]["id"]
            await alice.send("seen", cid)
            await bob.next_event("chat:message")
            await bob.close()
            for i in range(5):
                await alice.send(f"missed {i}", cid)
            done = await bob.reconnect()  # three sync calls of at most two messages each
            assert done["complete"] and bob.cursors[cid] == 6
            got = [(await bob.next_event("chat:message"))["payload"]["message"]["seq"] for _ in range(5)]
            assert got == [2, 3, 4, 5, 6]
            with pytest.raises(ChatError) as info:
                await bob.request("chat:history", {"conversation_id": cid, "limit": "many"})
            assert info.value.code == "bad_request"
            await alice.close()
            await bob.close()

    run(main())


def test_a_server_that_never_answers_the_close_is_aborted(run: Run) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_key(reader)) + HELLO)
        await writer.drain()
        await asyncio.sleep(30)  # never echoes the client's close, never closes

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            client = await ChatClient.connect(url, token("alice"))
            await client.close()  # gives up after its bound (5 s) and aborts the socket
            with pytest.raises(ConnectionClosed) as info:
                await client.next_event()
            assert info.value.code == 1006  # no close frame came back

    run(main())


def test_duplicates_are_dropped_and_a_close_fails_what_is_pending(run: Run) -> None:
    message = {"conversation_id": 7, "seq": 3, "sender_id": "bob", "content": "once", "client_id": "b"}
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_key(reader)))  # the 101 alone, the hello in a later read
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(HELLO)
        parser = FrameParser()
        while received.qsize() < 2:  # the typing notice, then the request
            for frame in parser.feed(await reader.read(65536)):
                received.put_nowait(orjson.loads(frame.payload))
        twice = event("chat:message", {"message": message})
        writer.write(twice + twice + event("user:online", {"user_id": "bob"}))
        writer.write(build_close(1001, "going away"))  # the request is never answered
        await writer.drain()
        while not any(f.opcode == Opcode.CLOSE for f in parser.feed(await reader.read(65536))):
            pass

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            client = await ChatClient.connect(url, token("alice"))
            client.notify("chat:typing", {"conversation_id": 7})
            with pytest.raises(ConnectionClosed) as info:
                await client.request("presence:query", {"user_ids": ["bob"]})
            assert (info.value.code, info.value.reason) == (1001, "going away")
            assert [received.get_nowait()["type"] for _ in range(2)] == ["chat:typing", "presence:query"]
            seen = [e["type"] async for e in client.events()]
            assert seen == ["chat:message", "user:online"]  # the repeated (conversation, seq) came once
            assert client.cursors == {7: 3}

    run(main())


def test_a_close_instead_of_hello_is_raised_by_connect(run: Run) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(switching(await read_key(reader)) + build_close(4001, "token expired"))
        await writer.drain()
        parser = FrameParser()
        while not any(f.opcode == Opcode.CLOSE for f in parser.feed(await reader.read(65536))):
            pass

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            with pytest.raises(ConnectionClosed) as info:
                await ChatClient.connect(url, token("alice"))
            assert info.value.code == 4001

    run(main())

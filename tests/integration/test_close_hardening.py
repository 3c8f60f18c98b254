"""Closing under pressure, over real sockets: the client always learns why it was closed, and
nothing it sends after the server's close frame is served.

A server that fails a connection while the client is still sending must not reset it: the
client would read ECONNRESET instead of the close frame that says why (the lingering close,
docs/protocol.md). And once the server has sent its close frame, application messages that
arrive during the close handshake are dropped: a `chat:send` after a 4001 is neither stored
nor delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from sohbet.ws.codes import CloseCode, Opcode
from sohbet.ws.config import Limits
from sohbet.ws.server import Server

from ..chatkit import Harness, WsChat, chat_server, token
from .conftest import RawClient, Recorder, client_frame, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]

#: Each case runs this many times per event loop: before the lingering close, one in 20-40 lost
#: its close frame to a reset, so 100 in a row make a reset all but certain to show.
ROUNDS = 100
PIECE = 4096


def text_header(n: int, key: bytes = b"\x00\x00\x00\x00") -> bytes:
    """The masked header of one text frame of *n* bytes (the mask key: all zeros, for speed)."""
    return bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big") + key


async def close_code_read(client: RawClient, chunks: list[bytes]) -> object:
    """Keep writing *chunks* while the server closes; return the code of the close frame read,
    or what went wrong instead (a reset, or TCP ending before a close frame)."""

    async def pump() -> None:
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                client.writer.write(chunk)
                await client.writer.drain()

    writer = asyncio.create_task(pump())
    try:
        while True:
            frame = await client.next_frame()
            if frame is None:
                return "EOF before a close frame"
            if frame.opcode == Opcode.CLOSE:
                code = int.from_bytes(frame.payload[:2], "big")
                await client.expect_eof()  # and after it, the server's half of TCP ends
                return code
    except ConnectionError as exc:
        return repr(exc)
    finally:
        await writer
        client.abort()


async def rounds(port: int, chunks: list[bytes]) -> list[object]:
    """What each of ROUNDS fresh connections read, streaming *chunks* into a server closing it."""
    return [await close_code_read(await RawClient.connect(port), chunks) for _ in range(ROUNDS)]


def assert_all_read(got: list[object], code: int) -> None:
    missed = [g for g in got if g != code]
    assert not missed, f"{len(missed)} of {ROUNDS} did not read close {code}: {sorted(set(map(str, missed)))}"


def test_a_message_over_the_limit_gets_its_1009_while_the_client_keeps_sending(run: Run) -> None:
    size = 100 * 1024  # against the 64 KiB default
    chunks = [text_header(size)] + [b"x" * PIECE] * (size // PIECE)

    async def main() -> None:
        async with running(Recorder(echo=False)) as server:
            assert_all_read(await rounds(server.port, chunks), CloseCode.MESSAGE_TOO_BIG)

    run(main())


def test_a_flood_of_empty_continuations_gets_its_1008_while_the_client_keeps_sending(run: Run) -> None:
    empty = client_frame(Opcode.CONTINUATION, fin=False)
    flood = [client_frame(Opcode.TEXT, "start", fin=False)] + [empty * (PIECE // len(empty))] * 30

    async def main() -> None:
        # No fragment cap, so the frame-rate limit (120 per 10 s) is what the flood hits.
        async with running(Recorder(echo=False), limits=Limits(max_fragments=0)) as server:
            assert_all_read(await rounds(server.port, flood), CloseCode.POLICY_VIOLATION)

    run(main())


async def failed_with_1009(port: int) -> RawClient:
    """A connection the server failed with 1009 and shut its side of; the client keeps its own."""
    client = await RawClient.connect(port)
    client.send_raw(text_header(100 * 1024))
    await client.expect_close(CloseCode.MESSAGE_TOO_BIG)
    await client.expect_eof()  # the server's FIN: it is lingering now
    return client


async def gone(server: Server) -> None:
    """Wait until the server has let go of every socket (the test's timeout bounds the wait)."""
    while server._sockets:
        await asyncio.sleep(0.02)


def test_lingering_ends_when_the_peer_hangs_up(run: Run) -> None:
    async def main() -> None:
        # Neither bound can end it within the test's time: only the peer's FIN can.
        async with running(Recorder(echo=False), limits=Limits(linger_s=60.0, linger_bytes=0)) as server:
            client = await failed_with_1009(server.port)
            assert list(server._sockets) != [] and server.connections == {}  # on_close has run
            client.writer.write_eof()
            await gone(server)
            client.abort()

    run(main())


def test_lingering_ends_after_linger_s_however_slowly_the_peer_trickles(run: Run) -> None:
    async def main() -> None:
        async with running(Recorder(echo=False), limits=Limits(linger_s=1.0)) as server:
            client = await failed_with_1009(server.port)
            with contextlib.suppress(ConnectionError):  # the server hangs up: a reset, at last
                while server._sockets:  # a byte every 20 ms: far below linger_bytes
                    client.writer.write(b"x")
                    await client.writer.drain()
                    await asyncio.sleep(0.02)
            await gone(server)
            client.abort()

    run(main())


def test_lingering_ends_after_linger_bytes_however_long_linger_s(run: Run) -> None:
    async def main() -> None:
        limits = Limits(linger_s=60.0, linger_bytes=256 * 1024)
        async with running(Recorder(echo=False), limits=limits) as server:
            client = await failed_with_1009(server.port)
            with contextlib.suppress(ConnectionError):
                while server._sockets:
                    client.writer.write(b"x" * PIECE)
                    await client.writer.drain()
            await gone(server)
            client.abort()

    run(main())


def test_shutdown_does_not_wait_for_lingering_sockets(run: Run) -> None:
    async def main() -> None:
        server = Server(Recorder(echo=False), limits=Limits(linger_s=60.0, linger_bytes=0))
        await server.start("127.0.0.1", 0)
        client = await failed_with_1009(server.port)
        async with asyncio.timeout(5.0):  # well before shutdown's own 20 s would abort it
            await server.shutdown(timeout_s=20.0)
        assert server._sockets == {}
        client.abort()

    run(main())


# --- nothing is served after our close frame ----------------------------------------------------


def late_send(cid: int) -> bytes:
    """A `chat:send` frame from a client that has not read the server's close frame yet."""
    envelope = {
        "type": "chat:send",
        "ref": "late",
        "payload": {"conversation_id": cid, "content": "late", "client_id": "l"},
    }
    return client_frame(Opcode.TEXT, orjson.dumps(envelope))


async def group_with_watcher(h: Harness) -> tuple[int, WsChat, WsChat]:
    """A group of alice, bob and carol, made by bob; carol watches it. Returns it, bob, carol."""
    carol = await h.connect("carol")
    bob = await h.connect("bob")
    cid = await bob.create("alice", "carol", title="g")
    await carol.expect("conversation:created")
    return cid, bob, carol


async def only_the_marker_arrives(cid: int, bob: WsChat, carol: WsChat) -> None:
    """Bob's later message is the first carol receives, and the only one stored: what alice sent
    after the server's close frame reached no one and nothing."""
    await bob.send(cid, "marker")
    first = await carol.expect("chat:message")
    assert first["payload"]["message"]["content"] == "marker"
    history = await carol.ok("chat:history", {"conversation_id": cid})
    assert [(m["sender_id"], m["content"]) for m in history["messages"]] == [("bob", "marker")]


def test_a_send_after_the_token_expired_is_neither_stored_nor_delivered(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            cid, bob, carol = await group_with_watcher(h)
            alice = await RawClient.connect(h.server.port, f"Authorization: Bearer {token('alice', 2.0)}", path="/ws")
            assert await alice.expect_close(CloseCode.TOKEN_EXPIRED) == "token expired"
            # Sent before alice's client read that close (it crossed the close on the wire):
            alice.send_raw(late_send(cid))
            alice.close(CloseCode.TOKEN_EXPIRED)
            await alice.expect_eof()  # the close handshake completed: the server read it all
            alice.abort()
            await only_the_marker_arrives(cid, bob, carol)

    run(main())


def test_a_send_in_the_same_read_as_the_request_that_closed_is_dropped(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with chat_server(database_url) as h:
            cid, bob, carol = await group_with_watcher(h)
            alice = await RawClient.connect(h.server.port, f"Authorization: Bearer {token('alice')}", path="/ws")
            # 21 unknown requests close with 1008 (more than 20 errors in 10 s); the send follows
            # them in the same TCP segment, so the server reads it in the same read.
            unknown = client_frame(Opcode.TEXT, b'{"type":"nope"}')
            alice.send_raw(unknown * 21 + late_send(cid))
            assert await alice.expect_close(CloseCode.POLICY_VIOLATION) == "more than 20 errors in 10 s"
            alice.close(CloseCode.POLICY_VIOLATION)
            await alice.expect_eof()
            alice.abort()
            await only_the_marker_arrives(cid, bob, carol)

    run(main())

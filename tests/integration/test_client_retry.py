"""sohbet's Python client when things go wrong in time: cursors across a gap, late replies, refused
and dropped handshakes, a busy `sync`, sockets let go of.

Against a scripted server over real sockets (`ScriptedChat`): each connection is answered as the
test says (a refusal, a drop, or a 101 and `hello`), and after the upgrade the test itself reads
what the client sent and writes what the server would answer, in the order it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Any, Final

import orjson
import pytest

from sohbet.client import ChatClient, ChatError, ConnectionClosed, HandshakeRefused
from sohbet.ws.codes import Opcode
from sohbet.ws.frames import FrameParser

from ..chatkit import token
from .test_client import HELLO, Run, event, read_key, scripted, switching

CID: Final = 7
#: An answer to the upgrade: close the socket unanswered (as a server past its connection limit).
DROP: Final = b""
#: An answer to the upgrade: the 101, then the socket closes before `hello` (a server dying).
UPGRADE_THEN_DROP: Final = "upgrade, then drop"


def refusal(status: str, retry_after: str | None = None) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    return (head + "\r\n{}").encode("latin-1")  # what a header may carry, byte for byte


def message(seq: int) -> dict[str, Any]:
    return {"conversation_id": CID, "seq": seq, "sender_id": "bob", "content": f"m{seq}", "client_id": f"c{seq}"}


def chat_message(*seqs: int) -> bytes:
    return b"".join(event("chat:message", {"message": message(seq)}) for seq in seqs)


def sync_done(ref: str, seq: int, *, complete: bool) -> bytes:
    return event("sync:done", {"conversations": {str(CID): seq}, "forbidden": [], "complete": complete}, ref)


def error(ref: str, code: str, retry_after_ms: int | None = None) -> bytes:
    payload: dict[str, Any] = {"code": code, "message": f"{code} for now"}
    if retry_after_ms is not None:
        payload["retry_after_ms"] = retry_after_ms
    return event("error", payload, ref)


class Peer:
    """The server's side of one upgraded connection, driven by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser()  # the server role: it unmasks what the client sent
        self.pending: list[Any] = []
        self.done = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        """The next message the client sent (within 5 s: a test that waits for one fails fast)."""
        async with asyncio.timeout(5.0):
            return await self._receive()

    async def _receive(self) -> dict[str, Any]:
        while True:
            while self.pending:
                frame = self.pending.pop(0)
                if frame.opcode == Opcode.TEXT:
                    return dict(orjson.loads(frame.payload))
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("the client closed the connection")
            self.pending.extend(self.parser.feed(data))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def drop(self) -> None:
        """Close the TCP connection, no close frame (as a server killed)."""
        self.done.set()


class ScriptedChat:
    """A loopback server answering each upgrade with the next of *answers* (None, or when they
    run out: the 101 and `hello`, then a `Peer` for the test in `peers`)."""

    def __init__(self, answers: list[bytes | str | None] | None = None, port: int = 0) -> None:
        self.answers = list(answers or [])
        self.port = port
        self.attempts = 0
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self._live: list[Peer] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def peer(self) -> Peer:
        """The next upgraded connection (within 5 s)."""
        return await asyncio.wait_for(self.peers.get(), 5.0)

    async def __aenter__(self) -> ScriptedChat:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()  # stop listening; then end the connections it has
        for peer in self._live:
            peer.drop()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the handlers close their sockets

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        answer = self.answers.pop(0) if self.answers else None
        try:
            key = await read_key(reader)
            if answer == UPGRADE_THEN_DROP:
                writer.write(switching(key))
                await writer.drain()
            elif answer is not None:
                assert isinstance(answer, bytes)
                writer.write(answer)
                await writer.drain()
            else:
                writer.write(switching(key) + HELLO)
                peer = Peer(reader, writer)
                self._live.append(peer)
                self.peers.put_nowait(peer)
                await peer.done.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def hang_up(client: ChatClient, peer: Peer) -> None:
    peer.drop()
    await client.close()


async def connected(chat: ScriptedChat, seen: int = 10) -> tuple[ChatClient, Peer]:
    """A client that has seen conversation 7 up to *seen*."""
    client = await ChatClient.connect(chat.url, token("alice"))
    peer = await chat.peer()
    peer.send(chat_message(seen))
    await client.next_event("chat:message", timeout=5.0)
    assert client.cursors == {CID: seen}
    return client, peer


def test_a_live_message_that_overtook_the_replay_does_not_move_the_cursor_past_the_gap(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat() as chat:
            client, peer = await connected(chat, seen=10)
            peer.send(chat_message(15))  # live, before 11..14 were replayed
            assert (await client.next_event())["payload"]["message"]["seq"] == 15
            assert client.cursors == {CID: 10}  # 11..14 are still missing
            syncing = asyncio.ensure_future(client.sync())
            request = await peer.receive()
            assert (request["type"], request["payload"]) == ("sync", {"cursors": {str(CID): 10}})
            peer.send(chat_message(11, 12))
            assert [(await client.next_event())["payload"]["message"]["seq"] for _ in range(2)] == [11, 12]
            assert client.cursors == {CID: 12}
            # sync:done names 14, the highest it replayed: 15 is the cursor because it was seen.
            peer.send(chat_message(13, 14) + sync_done(request["ref"], 14, complete=True))
            assert (await syncing)["complete"]
            assert client.cursors == {CID: 15}
            assert [(await client.next_event())["payload"]["message"]["seq"] for _ in range(2)] == [13, 14]
            await hang_up(client, peer)

    run(main())


def test_a_reply_after_its_request_timed_out_leaves_the_reader_running(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat() as chat:
            client, peer = await connected(chat)
            with pytest.raises(TimeoutError):
                await client.request("presence:query", {"user_ids": ["bob"]}, timeout=0.2)
            late = await peer.receive()
            peer.send(event("presence:state", {"users": []}, late["ref"]))  # too late
            answered = asyncio.ensure_future(client.request("presence:query", {"user_ids": ["bob"]}, timeout=5.0))
            request = await peer.receive()
            peer.send(event("presence:state", {"users": [{"user_id": "bob"}]}, request["ref"]))
            assert await answered == {"users": [{"user_id": "bob"}]}
            await hang_up(client, peer)

    run(main())


def test_a_late_reply_is_no_event_but_a_late_ack_still_moves_the_cursor(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat() as chat:
            client, peer = await connected(chat, seen=10)
            with pytest.raises(TimeoutError):
                await client.request("presence:query", {"user_ids": ["bob"]}, timeout=0.2)
            with pytest.raises(TimeoutError):
                send = {"conversation_id": CID, "content": "x", "client_id": "a"}
                await client.request("chat:send", send, timeout=0.2)
            late_query, late_send = await peer.receive(), await peer.receive()
            peer.send(event("presence:state", {"users": []}, late_query["ref"]))
            peer.send(event("chat:ack", {"message": message(11)}, late_send["ref"]))  # our own seq 11
            peer.send(event("user:online", {"user_id": "bob"}))
            assert (await client.next_event(timeout=5.0))["type"] == "user:online"  # the replies were no events
            assert client.cursors == {CID: 11}
            peer.send(chat_message(11))  # the same message, live: already seen
            peer.send(event("user:offline", {"user_id": "bob"}))
            assert (await client.next_event(timeout=5.0))["type"] == "user:offline"
            await hang_up(client, peer)

    run(main())


def test_reconnect_syncs_again_after_unavailable_and_rate_limited(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ScriptedChat() as chat:
            client, peer = await connected(chat, seen=10)
            peer.drop()
            with pytest.raises(ConnectionClosed):
                await client.next_event(timeout=5.0)
            reconnecting = asyncio.ensure_future(client.reconnect(timeout=5.0))
            peer = await chat.peer()
            first = await peer.receive()
            peer.send(error(first["ref"], "unavailable"))  # no retry_after_ms: a second
            at = loop.time()
            second = await peer.receive()
            assert 1.0 <= loop.time() - at <= 1.5 + 0.3, "unavailable waits 1 s plus jitter"
            peer.send(error(second["ref"], "rate_limited", retry_after_ms=300))
            at = loop.time()
            third = await peer.receive()
            assert 0.3 <= loop.time() - at <= 0.45 + 0.3, "rate_limited waits retry_after_ms plus jitter"
            peer.send(error(third["ref"], "rate_limited", retry_after_ms=0))
            at = loop.time()
            fourth = await peer.receive()
            assert 0.1 <= loop.time() - at <= 0.15 + 0.3, "retry_after_ms 0 still waits 0.1 s"
            assert {r["payload"]["cursors"][str(CID)] for r in (first, second, third, fourth)} == {10}
            peer.send(chat_message(11) + sync_done(fourth["ref"], 11, complete=True))
            assert (await reconnecting)["complete"]
            assert client.cursors == {CID: 11}
            await hang_up(client, peer)

    run(main())


def test_reconnect_gives_up_on_a_sync_still_busy_when_its_timeout_passes(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ScriptedChat() as chat:
            client, peer = await connected(chat)
            peer.drop()
            with pytest.raises(ConnectionClosed):
                await client.next_event(timeout=5.0)
            syncs = 0

            async def always_busy(peer: Peer) -> None:
                nonlocal syncs
                with contextlib.suppress(EOFError):
                    while True:
                        request = await peer.receive()
                        syncs += 1
                        peer.send(error(request["ref"], "unavailable", retry_after_ms=400))

            started = loop.time()
            reconnecting = asyncio.ensure_future(client.reconnect(timeout=1.5))
            peer = await chat.peer()
            answering = asyncio.ensure_future(always_busy(peer))
            with pytest.raises(ChatError, match="unavailable") as info:
                await reconnecting
            assert info.value.code == "unavailable"
            assert loop.time() - started < 1.5 + 0.3  # no wait begun past the timeout
            assert 2 <= syncs <= 4  # 0.4 to 0.6 s apart
            await hang_up(client, peer)
            await answering

    run(main())


def test_reconnect_resumes_a_busy_sync_from_the_pages_already_delivered(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat() as chat:
            client, peer = await connected(chat, seen=10)
            peer.drop()
            with pytest.raises(ConnectionClosed):
                await client.next_event(timeout=5.0)
            reconnecting = asyncio.ensure_future(client.reconnect(timeout=5.0))
            peer = await chat.peer()
            first = await peer.receive()
            assert first["payload"]["cursors"] == {str(CID): 10}
            peer.send(chat_message(11, 12) + sync_done(first["ref"], 12, complete=False))
            second = await peer.receive()
            assert second["payload"]["cursors"] == {str(CID): 12}
            peer.send(error(second["ref"], "unavailable", retry_after_ms=0))
            third = await peer.receive()
            assert third["payload"]["cursors"] == {str(CID): 12}  # not 10: 11 and 12 came already
            peer.send(chat_message(13) + sync_done(third["ref"], 13, complete=True))
            assert (await reconnecting)["complete"]
            got = [(await client.next_event("chat:message"))["payload"]["message"]["seq"] for _ in range(3)]
            assert got == [11, 12, 13] and client.cursors == {CID: 13}
            await hang_up(client, peer)

    run(main())


def test_a_sync_that_says_incomplete_but_delivers_nothing_ends_rather_than_loops(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat() as chat:
            client, peer = await connected(chat, seen=10)
            peer.drop()
            with pytest.raises(ConnectionClosed):
                await client.next_event(timeout=5.0)
            reconnecting = asyncio.ensure_future(client.reconnect(timeout=5.0))
            peer = await chat.peer()
            first = await peer.receive()
            peer.send(sync_done(first["ref"], 10, complete=False))  # "more to come", and nothing came
            with pytest.raises(ChatError, match="incomplete but delivered nothing") as info:
                await reconnecting
            assert info.value.code == "internal"
            await hang_up(client, peer)

    run(main())


def test_connect_with_retry_waits_out_a_503_but_not_a_401(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ScriptedChat([refusal("503 Service Unavailable", retry_after="1")]) as chat:
            started = loop.time()
            client = await ChatClient.connect(chat.url, token("alice"), retry=True, timeout=5.0)
            assert 1.0 <= loop.time() - started <= 1.5 + 0.5
            assert (chat.attempts, client.refusals, client.connect_failures) == (2, 1, 0)
            assert 1.0 <= client.waited_s <= 1.5
            await hang_up(client, await chat.peer())
        async with ScriptedChat([refusal("401 Unauthorized")]) as chat:
            started = loop.time()
            with pytest.raises(HandshakeRefused) as info:
                await ChatClient.connect(chat.url, token("alice"), retry=True, timeout=5.0)
            assert (info.value.status, info.value.is_retryable, chat.attempts) == (401, False, 1)
            assert loop.time() - started < 0.5

    run(main())


@pytest.mark.parametrize("retry_after", ["0", None, "soon", "\u00b2"], ids=["0", "none", "soon", "superscript-2"])
def test_a_retry_after_of_zero_or_none_does_not_busy_loop(run: Run, retry_after: str | None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ScriptedChat([refusal("503 Service Unavailable", retry_after)] * 1000) as chat:
            started = loop.time()
            with pytest.raises((HandshakeRefused, TimeoutError)):
                await ChatClient.connect(chat.url, token("alice"), retry=True, timeout=1.0)
            assert loop.time() - started <= 1.0 + 0.3
            if retry_after == "0":
                assert 5 <= chat.attempts <= 11  # 0.1 to 0.15 s apart
            else:
                assert chat.attempts == 1  # a second (plus jitter) is longer than the timeout

    run(main())


def test_a_connection_lost_during_the_handshake_is_tried_again_with_backoff(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat([DROP, UPGRADE_THEN_DROP, DROP]) as chat:
            client = await ChatClient.connect(chat.url, token("alice"), retry=True, timeout=5.0)
            assert (chat.attempts, client.connect_failures, client.refusals) == (4, 3, 0)
            assert 0.1 + 0.2 + 0.4 <= client.waited_s <= 1.5 * (0.1 + 0.2 + 0.4)  # doubling, plus jitter
            await hang_up(client, await chat.peer())
        async with ScriptedChat([DROP]) as chat:
            with pytest.raises(ConnectionClosed, match="lost during the handshake"):
                await ChatClient.connect(chat.url, token("alice"))  # without retry: the first one
            assert chat.attempts == 1
        loop = asyncio.get_running_loop()
        async with ScriptedChat([DROP] * 1000) as chat:
            started = loop.time()
            with pytest.raises(ConnectionClosed, match="lost during the handshake"):
                await ChatClient.connect(chat.url, token("alice"), retry=True, timeout=1.0)
            assert loop.time() - started <= 1.0 + 0.3
            assert 3 <= chat.attempts <= 5  # 0.1, 0.2, 0.4, ... apart: not a busy loop

    run(main())


def test_reconnect_waits_for_a_server_that_is_restarting(run: Run) -> None:
    async def main() -> None:
        async with ScriptedChat() as chat:
            client, peer = await connected(chat, seen=10)
            port = chat.port
        with pytest.raises(ConnectionClosed):  # the server went away, and its port is closed
            await client.next_event(timeout=5.0)
        with pytest.raises(ConnectionRefusedError):
            await ChatClient.connect(f"ws://127.0.0.1:{port}/ws", token("alice"))  # without retry
        reconnecting = asyncio.ensure_future(client.reconnect(timeout=5.0))
        await asyncio.sleep(0.5)
        async with ScriptedChat(port=port) as chat:  # back, on the same port
            peer = await chat.peer()
            request = await peer.receive()
            assert request["payload"]["cursors"] == {str(CID): 10}
            peer.send(sync_done(request["ref"], 10, complete=True))
            assert (await reconnecting)["complete"]
            assert client.connect_failures >= 2  # refused at 0, 0.1 and 0.3 s at least
            await hang_up(client, peer)

    run(main())


@pytest.mark.parametrize("upgrade", [False, True], ids=["unanswered", "no-hello"])
def test_an_attempt_that_times_out_closes_its_socket(run: Run, upgrade: bool) -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        if upgrade:
            writer.write(switching(key))  # and never a hello
        while await reader.read(65536):
            pass
        closed.set()  # the client closed its end

    async def main() -> None:
        server, url = await scripted(script)
        async with server:
            client = ChatClient(url, token("alice"))
            with pytest.raises(TimeoutError):
                await client.reconnect(timeout=0.3)
            await asyncio.wait_for(closed.wait(), 2.0)  # at once, not when garbage collected
            await client.close()  # nothing left half open to trip over
            with pytest.raises(ConnectionClosed, match="not connected"):
                await client.request("presence:query", {"user_ids": ["bob"]})

    run(main())


def test_a_port_refused_for_longer_than_the_timeout_raises_the_refusal(run: Run) -> None:
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await ChatClient.connect(f"ws://127.0.0.1:{port}/ws", token("alice"), retry=True, timeout=0.5)

    run(main())

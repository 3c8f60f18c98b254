"""The server's own per-message work, without the kernel: for counting instructions.

    python -P benchmarks/paths.py echo 20000      # a masked text frame in, its echo out
    python -P benchmarks/paths.py fanout 200      # one message framed and written to 1,000 sockets
    python -P benchmarks/paths.py send 20000      # chat:send from bytes to the writer's queue
    python -P benchmarks/paths.py ack 20000       # a committed message: counted, acked, fanned out

Each mode builds the real objects (`WebSocket`, `ChatService`, `broadcast`) on transports that
drop what they are given, then runs the path N times. Under `valgrind --tool=callgrind`, the
instructions of a run of 2N minus those of a run of N, divided by N, are the path's cost per
operation: a count that does not move with the machine's load, unlike a time, so two trees can
be compared on a shared machine. Without valgrind it prints the time per operation.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

from sohbet.auth import Identity, Verifier
from sohbet.chat.ids import ConversationId, MessageId, UserId
from sohbet.chat.model import NewMessage, StoredMessage
from sohbet.config import AuthConfig, ChatConfig
from sohbet.echo import ECHO_LIMITS, EchoHandler
from sohbet.service import ChatService
from sohbet.store.sqlite import SqliteStore
from sohbet.ws import _frames
from sohbet.ws.server import Server, WebSocket, broadcast

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class NullTransport:
    """Takes writes and drops them, as a kernel with room in its buffers would."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def opened(server: Server) -> WebSocket:
    ws = WebSocket(server)
    ws.connection_made(NullTransport())
    ws.data_received(UPGRADE)
    assert ws.is_open
    return ws


async def echo(n: int) -> None:
    server = Server(EchoHandler(), limits=ECHO_LIMITS)
    server.now = asyncio.get_running_loop().time()
    ws = opened(server)
    frame = _frames.build_frame(1, b"x" * 64, mask=b"\x01\x02\x03\x04")
    for _ in range(n):
        ws.data_received(frame)


async def fanout(n: int) -> None:
    server = Server(EchoHandler(), limits=ECHO_LIMITS)
    sockets = [opened(server) for _ in range(1000)]
    payload = b'{"type":"chat:message","payload":{"message":{"content":"to all"}}}'
    for _ in range(n):
        broadcast(sockets, payload)


class Recorder:
    """A socket as the chat service sees it; drops what it is sent."""

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id

    def send_text(self, data: str | bytes) -> None:
        pass

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def drained(self) -> None:
        return None


class NullOutbox:
    def deliver(self, sockets: Any, data: bytes, *, skip: Any = None) -> int:
        return sum(1 for s in sockets if s is not skip)


async def send(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(os.path.join(tmp, "paths.db"))
        await store.migrate()
        auth = AuthConfig(secret="x" * 32)
        config = ChatConfig(send_rate_per_s=0.0)
        service = ChatService(store, config, Verifier(auth), NullOutbox(), max_message_bytes=65536, leeway_s=0.0)
        alice = service.open(Recorder(1), Identity(UserId("alice"), time.time() + 3600))
        service.open(Recorder(2), Identity(UserId("bob"), time.time() + 3600))
        assert alice is not None
        service.hub.set_members(1, [UserId("alice"), UserId("bob")])  # type: ignore[arg-type]  # a cached conversation
        service.writer.max_queue = n + 1  # nothing is committed: the writer is not started
        template = b'{"type":"chat:send","ref":"r","payload":{"conversation_id":1,"content":"hi","client_id":"c%d"}}'
        for i in range(n):
            service.received(alice, template % i)
        await service.stop()  # the contact loads of open(), before the store goes
        await store.close()


async def ack(n: int) -> None:
    """The writer's work per committed message: counted, acked, fanned out to one other member."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(os.path.join(tmp, "paths.db"))
        await store.migrate()
        service = ChatService(
            store, ChatConfig(send_rate_per_s=0.0), Verifier(AuthConfig(secret="x" * 32)), NullOutbox(),
            max_message_bytes=65536, leeway_s=0.0,
        )  # fmt: skip
        alice = service.open(Recorder(1), Identity(UserId("alice"), time.time() + 3600))
        service.open(Recorder(2), Identity(UserId("bob"), time.time() + 3600))
        assert alice is not None
        conversation = ConversationId(1)
        service.hub.set_members(conversation, [UserId("alice"), UserId("bob")])
        # A queued send is (session, ref, message), and from step 6 on also when it was accepted.
        timed = hasattr(service.ctx, "stats")
        batch, stored = [], []
        for i in range(100):
            message = NewMessage(conversation, UserId("alice"), f"c{i}", "hi")
            batch.append((alice, "r", message, time.perf_counter()) if timed else (alice, "r", message))
            stored.append(StoredMessage(MessageId(i + 1), conversation, i + 1, UserId("alice"), "hi", f"c{i}", 0))
        for _ in range(n // 100):
            await service.writer._answer(batch, stored)  # type: ignore[arg-type]  # either shape of the tuple
        await service.stop()
        await store.close()


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    run = {"echo": echo, "fanout": fanout, "send": send, "ack": ack}[mode]
    start = time.perf_counter()
    asyncio.run(run(n))
    per_op = (time.perf_counter() - start) / n
    print(f"{mode}: {per_op * 1e6:.2f} µs per operation over {n} (startup included)")


if __name__ == "__main__":
    main()

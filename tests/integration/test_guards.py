"""Rules a mutation audit found unguarded (issue 8, "Tests that can fail"), each tested over real
sockets, on SQLite and on Postgres, so that breaking the rule turns the test red.

The races are made to happen, not hoped for: a store wrapper holds each batch's transaction
open until the test releases it. Every "must not arrive" check waits for a later positive
marker on the same connection.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import orjson

from sohbet.chat.ids import ConversationId, UserId
from sohbet.chat.model import NewMessage, StoredMessage
from sohbet.store import MessageStore
from sohbet.ws.config import Limits

from ..chatkit import Harness, WsChat, chat_server, open_store, token, with_chat
from .conftest import Frame, take_server_frames

Run = Callable[[Coroutine[Any, Any, Any]], Any]


class HeldStore:
    """A real store whose `append`s wait until the test releases them, one by one.

    It records each batch when its transaction is about to start, and the most batches that
    were ever in flight at once for one conversation.
    """

    def __init__(self, inner: MessageStore) -> None:
        self._inner = inner
        self.batches: list[list[NewMessage]] = []
        self._releases: list[asyncio.Event] = []
        self._finished: list[asyncio.Event] = []
        self._started = asyncio.Condition()
        self._in_flight: dict[ConversationId, int] = {}
        self.most_in_flight = 0
        self._open = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def append(self, batch: list[NewMessage], now_ms: int) -> list[StoredMessage | None]:
        release, finished = asyncio.Event(), asyncio.Event()
        if self._open:
            release.set()
        conversations = {m.conversation_id for m in batch}
        for cid in conversations:
            self._in_flight[cid] = self._in_flight.get(cid, 0) + 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight[cid])
        async with self._started:
            self.batches.append(list(batch))
            self._releases.append(release)
            self._finished.append(finished)
            self._started.notify_all()
        try:
            await release.wait()
            return await self._inner.append(batch, now_ms)
        finally:
            for cid in conversations:
                self._in_flight[cid] -= 1
            finished.set()

    async def started(self, count: int) -> None:
        """Wait until *count* batches have reached the store."""
        async with self._started:
            await asyncio.wait_for(self._started.wait_for(lambda: len(self.batches) >= count), 5.0)

    def release(self, index: int) -> None:
        """Let batch *index* (0: the first to arrive) run its transaction."""
        self._releases[index].set()

    async def run(self, index: int) -> None:
        """Let batch *index* run its transaction, and wait until it has."""
        self.release(index)
        await asyncio.wait_for(self._finished[index].wait(), 5.0)

    def release_all(self) -> None:
        """Let every batch run, and every later one without waiting."""
        self._open = True
        for release in self._releases:
            release.set()


@asynccontextmanager
async def held(url: str) -> AsyncIterator[tuple[Harness, HeldStore]]:
    """A chat server (two transactions in flight, no send rate limit) on a `HeldStore`."""
    store = HeldStore(await open_store(url))
    try:
        async with chat_server(url, store=store, chat=with_chat(send_rate_per_s=0), depth=2) as h:  # type: ignore[arg-type]
            try:
                yield h, store
            finally:
                store.release_all()  # whatever is still queued commits at shutdown
    finally:
        await store.close()


async def reply_to(client: WsChat, ref: str) -> dict[str, Any]:
    """The answer to request *ref*, whatever its type; other messages wait in the backlog."""
    for i, item in enumerate(client.backlog):
        if item.get("ref") == ref:
            return client.backlog.pop(i)
    while True:
        item = dict(orjson.loads(await asyncio.wait_for(client.ws.recv(), 5.0)))
        if item.get("ref") == ref:
            return item
        client.backlog.append(item)


def send(cid: int, client_id: str, content: str | None = None) -> dict[str, Any]:
    payload = {"conversation_id": cid, "content": content or client_id, "client_id": client_id}
    return {"type": "chat:send", "ref": client_id, "payload": payload}


# --- the store refuses, at commit, a sender who left after the send was accepted ----------------


def test_a_leave_while_the_send_commits_stores_nothing(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with held(database_url) as (h, store):
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            bob_phone = await h.connect("bob")
            carol = await h.connect("carol")
            cid = await alice.create("bob", "carol")
            await bob.send_raw(send(cid, "late"))  # bob is a member now: the service accepts it
            await store.started(1)  # its transaction is about to start, and waits
            await bob_phone.ok("conversation:leave", {"conversation_id": cid})  # on his other device
            store.release(0)
            refused = await reply_to(bob, "late")
            assert refused["type"] == "error" and refused["payload"]["code"] == "forbidden", refused
            store.release_all()
            await alice.send(cid, "marker")
            # carol's first message is the marker: the leaver's message was never delivered ...
            first = await carol.expect("chat:message")
            assert first["payload"]["message"]["content"] == "marker"
            assert first["payload"]["message"]["seq"] == 1  # ... nor stored, and it burnt no seq
            history = await alice.ok("chat:history", {"conversation_id": cid})
            assert [m["content"] for m in history["messages"]] == ["marker"]

    run(main())


# --- one transaction in flight per conversation ---------------------------------------------------


def test_a_conversation_is_in_one_batch_at_a_time(run: Run, database_url: str) -> None:
    async def main() -> None:
        async with held(database_url) as (h, store):
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            carol = await h.connect("carol")
            cid = await alice.create("bob")
            other = await alice.create("carol")
            await alice.send_raw(send(cid, "m1"))
            await store.started(1)  # the first batch holds the conversation
            for key in ("m2", "m3"):
                await alice.send_raw(send(cid, key))  # queued behind it: same conversation
            await alice.send_raw(send(other, "o1"))  # another conversation: free to start
            await store.started(2)
            # Commit the later transaction first: a conversation in both would be numbered
            # out of order.
            await store.run(1)
            await store.run(0)
            store.release_all()
            acks = [
                (await alice.expect("chat:ack", ref=key))["payload"]["message"]["seq"] for key in ("m1", "m2", "m3")
            ]
            assert acks == [1, 2, 3]  # seq order is submission order
            seen = []
            for _ in range(3):
                message = (await bob.expect("chat:message"))["payload"]["message"]
                seen.append((message["seq"], message["content"]))
            assert seen == [(1, "m1"), (2, "m2"), (3, "m3")]
            assert (await carol.expect("chat:message"))["payload"]["message"]["content"] == "o1"
            # The second transaction took only the other conversation's message.
            assert [(m.conversation_id, m.client_id) for m in store.batches[1]] == [(other, "o1")]
            assert store.most_in_flight == 1

    run(main())


# --- presence: offline only when the grace period has ended ------------------------------------


async def until_gone(h: Harness, user: str) -> float:
    """Wait until the service has seen the last connection of *user* close; return the loop
    time by then (the grace period started at or before it)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5.0):
        while h.chat.hub.connections(UserId(user)):
            await asyncio.sleep(0.01)
    return loop.time()


def test_offline_waits_for_the_grace_period_and_comes_when_it_ends(run: Run, database_url: str) -> None:
    grace = 30.0  # the server's own ticker never reaches it during the test: the test ticks

    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(presence_grace_s=grace)) as h:
            alice = await h.connect("alice")
            bob = await h.connect("bob")
            cid = await alice.create("bob")
            await alice.nothing_pending()
            await bob.ws.close()
            gone = await until_gone(h, "bob")
            h.chat.tick(time.time(), gone)  # right after the close ...
            h.chat.tick(time.time(), gone + grace - 1.0)  # ... and just before the grace ends
            back = await h.connect("bob")  # back within the grace period
            await back.send(cid, "marker")
            seen = []
            while not seen or seen[-1] != "chat:message":
                seen.append((await alice.recv())["type"])
            assert seen == ["chat:message"]  # no user:offline and user:online before the marker
            await back.ws.close()
            gone = await until_gone(h, "bob")
            h.chat.tick(time.time(), gone + grace + 0.1)  # the grace period is over
            assert (await alice.expect("user:offline"))["payload"] == {"user_id": "bob"}

    run(main())


# --- 4008 on the broadcast path ----------------------------------------------------------------


class Stalled:
    """A WebSocket client on a plain socket with a small receive buffer, which reads only when
    the test says so: unread messages pile up in the server's buffer, not in this process."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(rest)

    @classmethod
    async def connect(cls, port: int, user: str) -> Stalled:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token(user)}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5.0)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(sock, rest)

    async def read_until_close(self, timeout: float = 10.0) -> list[Frame]:
        """Resume reading: every frame up to and including the server's close frame (or all
        there were, if the server goes quiet for a second without closing)."""
        loop = asyncio.get_running_loop()
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while not frames or frames[-1].opcode != 8:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), 1.0)
                except TimeoutError:
                    return frames  # nothing more is coming, and no close frame came
                if not data:
                    return frames
                self.buffer += data
                frames += take_server_frames(self.buffer)
        return frames

    def close(self) -> None:
        self.sock.close()


def test_a_member_who_stops_reading_is_closed_4008_while_others_keep_receiving(run: Run, database_url: str) -> None:
    limits = Limits(
        max_buffered_bytes=256 * 1024,
        slow_consumer_s=60.0,  # only the buffered-bytes limit can close within the test
        max_frames_per_10s=0,
        close_timeout_s=10.0,  # time enough to read the backlog and then the close frame
    )
    content = "\U0001d11e" * 4000  # 16,000 bytes of UTF-8 per message
    count = 400  # 6.4 MB: more than the kernel buffers of both sides and the limit together

    async def main() -> None:
        async with chat_server(database_url, chat=with_chat(send_rate_per_s=0), limits=limits) as h:
            alice = await h.connect("alice")
            carol = await h.connect("carol")
            cid = await alice.create("bob", "carol")
            bob = await Stalled.connect(h.server.port, "bob")
            try:
                for start in range(0, count, 8):  # eight in flight at a time: the request cap
                    keys = [f"k{n}" for n in range(start, min(start + 8, count))]
                    for key in keys:
                        await alice.send_raw(send(cid, key, content))
                    for key in keys:
                        assert (await alice.expect("chat:ack", ref=key))["payload"]["message"]["content"] == content
                frames = await bob.read_until_close()
            finally:
                bob.close()
            closed = bool(frames) and frames[-1].opcode == 8
            assert closed, f"no close frame after {len(frames)} frames"
            code = int.from_bytes(frames[-1].payload[:2], "big")
            assert (code, frames[-1].payload[2:]) == (4008, b"too slow: messages were not read")
            delivered = sum(b'"chat:message"' in f.payload for f in frames)
            assert delivered < count  # cut off on the way
            seqs = [(await carol.expect("chat:message"))["payload"]["message"]["seq"] for _ in range(count)]
            assert seqs == list(range(1, count + 1))  # the others got every message, in order
            await alice.send(cid, "after")
            assert (await carol.expect("chat:message"))["payload"]["message"]["content"] == "after"

    run(main())

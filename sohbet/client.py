"""An async Python client for sohbet: for tests, benchmarks and bots.

Layer: transport. Speaks protocol v1 over the same sans-I/O core as the server (client role);
imports the ws layer and the chat wire names, nothing of the service.

    client = await ChatClient.connect("ws://127.0.0.1:8080/ws", token)
    conversation = await client.request("conversation:create", {"members": ["bob"]})
    message = await client.send("hi", conversation["conversation"]["id"])
    async for event in client.events(): ...
    await client.reconnect()   # after a drop: a new connection, then `sync` from the last seen seqs

An upgrade refused with 503 or 429 (the server is busy, or this address is over its rate) raises
`HandshakeRefused` with the `Retry-After` seconds; `reconnect` (and `connect(..., retry=True)`)
waits that long (at least 0.1 s), plus jitter, and tries again until its timeout. A connection
refused at TCP or lost before `hello` (a server restarting, or past its connection limit) is
tried again there too, after a backoff that doubles from 0.1 s to 2 s, plus jitter.

Replies are matched to requests by `ref`; only replies carry one, so a reply that comes after its
request gave up is dropped, not delivered as an event (a late `chat:ack` still moves the cursor).
Every `chat:message` seen (live or replayed) is noted, the per-conversation cursor is the last seq
seen with none missing before it, and duplicates by `(conversation_id, seq)` are dropped, so a
reconnect delivers exactly what was missed.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from sohbet.chat.wire import SUBPROTOCOL, EventType, RequestType
from sohbet.errors import ErrorCode, SohbetError
from sohbet.ws.codes import CloseCode
from sohbet.ws.events import ClosedByPeer, ConnectionFailed, PingReceived
from sohbet.ws.frames import accept_key
from sohbet.ws.handshake import WEBSOCKET_VERSION
from sohbet.ws.protocol import Connection, TextReceived

__all__ = ["RETRYABLE_STATUSES", "ChatClient", "ChatError", "ConnectionClosed", "HandshakeRefused"]

#: Refusals of an upgrade that say "later", not "never": the server is busy (503) or this
#: address is over its rate (429). Both come with `Retry-After`.
RETRYABLE_STATUSES: Final = frozenset({HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS})
#: Seconds to wait after a retryable refusal that named none.
DEFAULT_RETRY_S: Final = 1.0
#: The shortest wait before another attempt, whatever the server said: `Retry-After: 0` (or
#: `retry_after_ms: 0`) must not turn a client into a busy loop against a busy server.
MIN_RETRY_S: Final = 0.1
#: After a connection refused at TCP or lost during the handshake (no `Retry-After` to go by),
#: the first wait; each further failure in a row doubles it, up to `MAX_BACKOFF_S`.
BACKOFF_S: Final = 0.1
MAX_BACKOFF_S: Final = 2.0
#: `sync` errors that say "later": `reconnect` syncs again after them.
_SYNC_AGAIN: Final = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.RATE_LIMITED})
#: A retry waits `Retry-After` times 1 to 1 + this, at random: the server's whole seconds spread
#: a storm over seconds, this spreads each second's clients within it.
RETRY_JITTER: Final = 0.5


class ChatError(SohbetError):
    """The server answered a request with `error`."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retry_after_ms = retry_after_ms


class ConnectionClosed(SohbetError):
    """The connection ended; `code` is the close code (1006 when there was no close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed with {code} {reason}".strip())
        self.code = int(code)
        self.reason = reason


class HandshakeRefused(ConnectionClosed):
    """The server answered the upgrade with an HTTP error: its `status`, and `retry_after_s`
    (from `Retry-After`, None without one)."""

    def __init__(self, status_line: str, status: int, body: str, retry_after_s: float | None) -> None:
        super().__init__(CloseCode.ABNORMAL, f"handshake refused: {status_line} {body}")
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def is_retryable(self) -> bool:
        """Whether the server said "later" (503, 429) rather than "never" (401, 403, ...)."""
        return self.status in RETRYABLE_STATUSES


def _refusal(status_line: str, headers: dict[str, str], body: str) -> HandshakeRefused:
    parts = status_line.split(" ", 2)
    # ASCII digits only: str.isdigit() also accepts "²", which int() then refuses.
    status = int(parts[1]) if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() else 0
    retry = headers.get("retry-after", "")
    # Only the delta-seconds form: sohbet sends no other, and a date would need a clock we trust.
    retry_after_s = float(retry) if retry.isascii() and retry.isdigit() else None
    return HandshakeRefused(status_line, status, body, retry_after_s)


class _LostDuringHandshake(ConnectionClosed):
    """The connection ended before `hello` without a close frame or an HTTP answer: the server
    went away (restarting) or dropped the socket (past its connection limit). Worth another try,
    unlike a refusal for good or an answer that does not match our key."""


def _retry_wait(seconds: float | None, default: float = DEFAULT_RETRY_S) -> float:
    """How long to wait before trying again when the server asked for *seconds* (None: it named
    none): at least `MIN_RETRY_S`, times 1 to 1 + `RETRY_JITTER` at random."""
    wait_s = default if seconds is None else seconds
    return max(wait_s, MIN_RETRY_S) * (1.0 + random.random() * RETRY_JITTER)


class _ClientSocket(asyncio.Protocol):
    """The client's side of one socket (the server's is `WebSocket`): the handshake, then frames
    through the same sans-I/O `Connection`, in the client role."""

    def __init__(self, request: bytes, key: str) -> None:
        self.request = request
        self.key = key
        self.transport: Any = None
        self.conn = Connection(client=True, max_message_bytes=16 * 1024 * 1024)
        self.head = b""
        self.upgraded: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[dict[str, Any] | ConnectionClosed] = asyncio.Queue()
        self.close_code: int = CloseCode.ABNORMAL
        self.close_reason = ""

    def connection_made(self, transport: Any) -> None:  # asyncio's contract
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:  # asyncio's contract
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4 :]
            status = head.split("\r\n", 1)[0]
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
            }
            if f" {HTTPStatus.SWITCHING_PROTOCOLS.value} " not in status + " ":
                body = data.decode("utf-8", "replace")
                self.upgraded.set_exception(_refusal(status, headers, body))
                self.transport.close()
                return
            if headers.get("sec-websocket-accept") != accept_key(self.key):
                self.upgraded.set_exception(
                    ConnectionClosed(CloseCode.ABNORMAL, "handshake answer does not match our key")
                )
                self.transport.close()
                return
            self.upgraded.set_result(headers.get("sec-websocket-protocol", ""))
            if not data:
                return
        for event in self.conn.feed(data):
            if type(event) is TextReceived:
                self.inbox.put_nowait(orjson.loads(event.data))
            elif isinstance(event, PingReceived):
                self.conn.pong(event.data)
            elif isinstance(event, ClosedByPeer | ConnectionFailed):
                self.close_code, self.close_reason = event.code, event.reason
        out = self.conn.take_output()
        if out:
            self.transport.write(out)

    def send(self, obj: dict[str, Any]) -> None:
        self.conn.send_text(orjson.dumps(obj))
        self.transport.write(self.conn.take_output())

    def connection_lost(self, exc: Exception | None) -> None:  # asyncio's contract
        if not self.upgraded.done():
            self.upgraded.set_exception(
                _LostDuringHandshake(CloseCode.ABNORMAL, "connection lost during the handshake")
            )
        self.inbox.put_nowait(ConnectionClosed(self.close_code, self.close_reason))


class ChatClient:
    """One user's connection to a sohbet server."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.hello: dict[str, Any] = {}
        #: Per conversation, the last seq seen with none missing before it: where `sync` resumes.
        self.cursors: dict[int, int] = {}
        self._sock: _ClientSocket | None = None
        self._refs = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any] | ConnectionClosed] = asyncio.Queue()
        self._seen: set[tuple[int, int]] = set()
        self._reader: asyncio.Task[None] | None = None
        #: Retryable refusals (503, 429) waited out by `reconnect` or `connect(retry=True)`, and
        #: the seconds spent waiting: how much a busy server turned this client away.
        self.refusals = 0
        self.waited_s = 0.0
        #: Attempts that were refused at TCP or lost during the handshake and tried again (their
        #: backoffs count in `waited_s` too).
        self.connect_failures = 0
        #: When the latest `hello` arrived (`time.monotonic()`: comparable across processes).
        self.hello_at = 0.0

    @classmethod
    async def connect(cls, url: str, token: str, *, timeout: float = 10.0, retry: bool = False) -> ChatClient:
        """Open a connection and wait for `hello`.

        Args:
            timeout: seconds for the whole of it, waits between attempts included.
            retry: after a refusal that says "later" (503, 429), wait its `Retry-After` (plus
                jitter) and try again, while *timeout* lasts; after a connection refused at TCP
                or lost before `hello`, back off (plus jitter) and try again likewise.

        Raises:
            HandshakeRefused: the handshake was refused (the message has the HTTP status); with
                *retry*, only a refusal for good, or a wait that would outlast *timeout*.
            ConnectionClosed: the connection ended before `hello` (with *retry*: with a close
                frame, or for longer than *timeout*).
            ConnectionRefusedError: nothing listens there (with *retry*: for longer than *timeout*).
            TimeoutError: *timeout* passed during an attempt.
        """
        client = cls(url, token)
        await (client._open_patiently(timeout) if retry else client._open(timeout))
        return client

    async def _open_patiently(self, timeout: float) -> None:
        """`_open`, again after each refusal that says "later" (waiting its `Retry-After`) and
        each connection refused or lost during the handshake (waiting a backoff), within
        *timeout* in all. A wait that would outlast *timeout* is not begun: the last error is
        raised instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        failures_in_a_row = 0
        while True:
            try:
                await self._open(max(deadline - loop.time(), 0.0))
                return
            except HandshakeRefused as refused:
                if not refused.is_retryable:
                    raise
                wait_s = _retry_wait(refused.retry_after_s)
                if loop.time() + wait_s >= deadline:
                    raise  # the server asks for longer than we have
                self.refusals += 1
            except (ConnectionError, _LostDuringHandshake):
                # Nothing listening (a server restarting), or the socket dropped unanswered (one
                # past its connection limit): back off, doubling, so that a crowd does not return
                # in lockstep.
                wait_s = _retry_wait(min(BACKOFF_S * 2**failures_in_a_row, MAX_BACKOFF_S))
                if loop.time() + wait_s >= deadline:
                    raise
                failures_in_a_row += 1
                self.connect_failures += 1
            self.waited_s += wait_s
            await asyncio.sleep(wait_s)

    async def _open(self, timeout: float) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "ws":
            raise ValueError(f"only ws:// URLs are supported, not {self.url}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        key = base64.b64encode(os.urandom(16)).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {WEBSOCKET_VERSION}\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            f"Authorization: Bearer {self.token}\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        # Each attempt has its own event queue, which its reader alone fills: the end of a
        # failed attempt must not be taken for the `hello` of the next.
        events: asyncio.Queue[dict[str, Any] | ConnectionClosed] = asyncio.Queue()
        sock: _ClientSocket | None = None
        try:
            async with asyncio.timeout(timeout):
                _, sock = await loop.create_connection(lambda: _ClientSocket(request, key), host, port)
                await sock.upgraded
                self._sock, self._events = sock, events
                self._reader = asyncio.ensure_future(self._read(sock, events))
                hello = await events.get()
            if isinstance(hello, ConnectionClosed):
                if hello.code == CloseCode.ABNORMAL:  # no close frame: dropped, not refused
                    raise _LostDuringHandshake(hello.code, hello.reason or "connection lost before hello")
                raise hello
        except BaseException:
            # Timed out, cancelled or failed: let go of this attempt's socket now, not when it is
            # collected (a retrying client would hold one per attempt). Its reader, if any, ends
            # as after any drop (ConnectionClosed(1006) into this attempt's queue), so a later
            # `close` or `next_event` sees an ended connection, not a cancelled task.
            if sock is not None:
                sock.transport.abort()
            raise
        self.hello = hello["payload"]
        self.hello_at = time.monotonic()

    async def _read(self, sock: _ClientSocket, events: asyncio.Queue[dict[str, Any] | ConnectionClosed]) -> None:
        while True:
            item = await sock.inbox.get()
            if isinstance(item, ConnectionClosed):
                for waiter in self._waiting.values():
                    if not waiter.done():
                        waiter.set_exception(item)
                self._waiting.clear()
                events.put_nowait(item)
                return
            ref = item.get("ref")
            if ref is not None:
                # Only replies carry `ref`. One whose request is no longer waiting (it timed out)
                # is late: dropped, not an event. An ack still names our own message's seq.
                pending = self._waiting.pop(str(ref), None)
                if pending is not None and not pending.done():
                    pending.set_result(item)
                if item["type"] == EventType.ACK:
                    self._note(item["payload"]["message"])
                continue
            if item["type"] == EventType.MESSAGE and not self._note(item["payload"]["message"]):
                continue  # already seen (a replay overlapping live delivery)
            events.put_nowait(item)

    def _note(self, message: dict[str, Any]) -> bool:
        key = (message["conversation_id"], message["seq"])
        if key in self._seen:
            return False
        self._seen.add(key)
        cid, seq = key
        cursor = self.cursors.get(cid)
        if cursor is None:
            self.cursors[cid] = seq  # the first seen here: where this client came in
        elif seq == cursor + 1:
            # Seqs have no gaps, so the cursor is the last seq seen with none missing before it:
            # a live message that overtook a replay must not move a later `sync` past the gap.
            seen = self._seen
            while (cid, seq + 1) in seen:
                seq += 1
            self.cursors[cid] = seq
        return True

    async def request(
        self, kind: str, payload: dict[str, Any] | None = None, *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a request and return the payload of its reply.

        Raises:
            ChatError: the reply was an `error`.
            ConnectionClosed: the connection ended first.
        """
        sock = self._sock
        if sock is None or sock.transport.is_closing():
            raise ConnectionClosed(CloseCode.ABNORMAL, "not connected")
        ref = f"r{next(self._refs)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = waiter
        sock.send({"type": kind, "payload": payload or {}, "ref": ref})
        try:
            async with asyncio.timeout(timeout):
                reply = await waiter
        finally:
            self._waiting.pop(ref, None)  # answered, or given up on: a late reply is dropped
        if reply["type"] == EventType.ERROR:
            p = reply["payload"]
            raise ChatError(p["code"], p["message"], p.get("retry_after_ms"))
        return dict(reply["payload"])

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        """Send a message that has no reply (`chat:typing`, `chat:read`)."""
        if self._sock is None:
            raise ConnectionClosed(CloseCode.ABNORMAL, "not connected")
        self._sock.send({"type": kind, "payload": payload})

    async def send(self, content: str, conversation_id: int, client_id: str | None = None) -> dict[str, Any]:
        """Send a chat message; return the stored message once the server has acked it."""
        ack = await self.request(
            RequestType.SEND,
            {"conversation_id": conversation_id, "content": content, "client_id": client_id or uuid.uuid4().hex},
        )
        return dict(ack["message"])

    async def next_event(self, kind: str | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
        """The next event (of *kind*, skipping others), as `{"type", "payload"}`.

        Raises:
            ConnectionClosed: the connection ended first.
        """
        async with asyncio.timeout(timeout):
            while True:
                item = await self._events.get()
                if isinstance(item, ConnectionClosed):
                    self._events.put_nowait(item)  # later calls see it too
                    raise item
                if kind is None or item["type"] == kind:
                    return item

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event until the connection closes."""
        while True:
            try:
                yield await self.next_event(timeout=1e9)
            except ConnectionClosed:
                return

    async def sync(self) -> dict[str, Any]:
        """Catch up from the cursors, calling `sync` again while the server says incomplete."""
        return await self._sync_from(dict(self.cursors))

    async def _sync_from(self, start: dict[int, int]) -> dict[str, Any]:
        """`sync` from *start*, which each page's `sync:done` advances in place: a caller that
        tries again after an error resumes where the delivered pages left off."""
        while True:
            before = dict(start)
            done = await self.request(RequestType.SYNC, {"cursors": {str(c): s for c, s in start.items()}})
            for cid, seq in done["conversations"].items():
                start[int(cid)] = seq  # where the next call resumes: what this one delivered
                self.cursors[int(cid)] = max(self.cursors.get(int(cid), 0), seq)
            if done["complete"]:
                return done
            if start == before:  # "more to come" yet nothing came: asking again would loop forever
                raise ChatError(ErrorCode.INTERNAL, "sync said it was incomplete but delivered nothing")

    async def reconnect(self, *, timeout: float = 10.0) -> dict[str, Any]:
        """Open a new connection and `sync` everything missed since the last seen seqs.

        A refusal that says "later" (503 or 429 with `Retry-After`: the server is busy, as
        after a restart when every client comes back at once) is waited out, plus jitter, and
        the upgrade tried again while *timeout* lasts, as after a connection refused at TCP or
        lost before `hello` (with a backoff); so is a `sync` answered `unavailable` or
        `rate_limited`, from where the pages delivered so far left off (each call has its own
        10 s for its answer besides).

        Raises:
            HandshakeRefused: refused for good, or for longer than *timeout*.
            ConnectionClosed: the connection ended before `hello` (with a close frame, or lost
                for longer than *timeout*), or during the sync.
            ConnectionRefusedError: nothing listened there for longer than *timeout*.
            TimeoutError: *timeout* passed during an attempt to connect.
            ChatError: the sync was refused for good, or for longer than *timeout* (its `code`
                is the last answer's: `unavailable` or `rate_limited`).
        """
        start = dict(self.cursors)  # advanced by each complete=false page, kept across retries
        await self.close()
        self._events = asyncio.Queue()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._open_patiently(timeout)
        while True:
            try:
                return await self._sync_from(start)
            except ChatError as exc:
                # The server is busy catching everyone up (storage slow: `unavailable`), or
                # this user synced too often: wait as told, or a second, and sync again.
                if exc.code not in _SYNC_AGAIN:
                    raise
                wait_s = _retry_wait(None if exc.retry_after_ms is None else exc.retry_after_ms / 1000)
                if loop.time() + wait_s >= deadline:
                    raise
                await asyncio.sleep(wait_s)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection (the close handshake, then the TCP connection)."""
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        if not sock.transport.is_closing():
            sock.conn.close(code, reason)
            sock.transport.write(sock.conn.take_output())
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
            except TimeoutError:
                # No answer to our close: drop the socket. Its connection_lost ends the reader with
                # ConnectionClosed(1006), so pending requests and later `next_event` calls see the
                # end instead of waiting for their own timeouts.
                sock.transport.abort()
                await self._reader

    @property
    def close_code(self) -> int | None:
        """The close code once the connection has ended."""
        return None if self._sock is None or not self._sock.transport.is_closing() else self._sock.close_code

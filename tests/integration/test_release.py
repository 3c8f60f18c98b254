"""A connection that ends leaves nothing behind for the garbage collector.

Its objects must go by reference counting the moment the last reference does. What only a full
collection frees waits, on a server holding thousands of connections, for the next one: minutes
and a churn later, after every connection that ended meanwhile has piled up, at a cost of a
stall of tens to hundreds of milliseconds, and in memory the allocator can no longer give back.

Each test runs on both backends and both event loops, with the automatic collector off, so that
an object left in a reference cycle is still there to be found when the test collects by hand.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import websockets

from sohbet.errors import StoreUnavailable
from sohbet.service.session import Session
from sohbet.ws.config import Limits
from sohbet.ws.http11 import Request, Response
from sohbet.ws.server import Handler, WebSocket

from ..chatkit import Harness, chat_server, token
from .conftest import running

Run = Callable[[Coroutine[Any, Any, Any]], Any]

#: The modules whose objects make up a server's connection (`WebSocket`, `Session`, the HTTP
#: phase and its reader, httptools's parser); the test's own client library makes cycles of
#: its own, which are not the server's business.
SERVERS_OWN = ("sohbet.", "httptools.")


@contextmanager
def collector_off() -> Iterator[Callable[[], list[str]]]:
    """Automatic collection off; yields a function that collects once, by hand, and names the
    server's objects that only the collection could free."""

    def left_in_cycles() -> list[str]:
        gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it finds unreachable, to look at
        try:
            gc.collect()
            found = [o for o in gc.garbage if type(o).__module__.startswith(SERVERS_OWN)]
            return sorted(f"{type(o).__module__}.{type(o).__qualname__}" for o in found)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    gc.collect()  # what earlier tests left is not this test's
    gc.disable()
    try:
        yield left_in_cycles
    finally:
        gc.enable()


def alive() -> list[str]:
    """The server's sockets and sessions still alive, by any reference (call it after a collection)."""
    return [type(o).__name__ for o in gc.get_objects() if isinstance(o, (WebSocket, Session))]


async def gone(h: Harness) -> None:
    """Until the server has let go of every socket (each one's `connection_lost` has run) and
    every request the service was answering has ended (a read may outlive its socket)."""
    while h.server._sockets or h.chat.ctx.tasks:
        await asyncio.sleep(0.01)


def test_chat_connections_that_close_leave_nothing_in_reference_cycles(run: Run, database_url: str) -> None:
    """Users who said hello, sent, read history and synced, then left: by their own close, or by
    the server's (a binary frame is refused with 1003), while a read of theirs was under way.
    Nothing holds their sockets or sessions afterwards, in a cycle or otherwise."""

    async def main() -> None:
        async with chat_server(database_url) as h:
            with collector_off() as left_in_cycles:
                alice, bob = await h.connect("alice"), await h.connect("bob")
                cid = await alice.create("bob", "carol")
                await alice.send(cid, "hello")
                await bob.ok("chat:history", {"conversation_id": cid})
                await bob.send_raw({"type": "sync", "payload": {"cursors": {str(cid): 0}}, "ref": "s"})
                await bob.expect("sync:done", ref="s")
                await alice.send_raw({"type": "chat:history", "payload": {"conversation_id": cid}, "ref": "h"})
                await alice.ws.close()  # with its history read maybe still being answered
                await bob.ws.send(b"\x00")  # binary: the server closes with 1003
                with pytest.raises(websockets.ConnectionClosed):
                    await bob.ws.recv()
                assert bob.ws.close_code == 1003
                await gone(h)
                assert left_in_cycles() == []
                assert alive() == []  # nor held by reference: by the writer that answered their sends, say

    run(main())


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes over a new socket; what the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    answers = await reader.read()
    writer.close()
    return answers


def test_http_sockets_and_refused_upgrades_leave_nothing_in_reference_cycles(run: Run, database_url: str) -> None:
    """Plain HTTP (a kept-alive request, then one that closes), requests refused while their head
    is parsed (a body over the limit: 413; more pipelined requests than the limit), an upgrade
    refused with 401 and one accepted: the HTTP phase of each socket goes with it, or with its
    upgrade."""

    async def main() -> None:
        async with chat_server(database_url) as h:
            port, limits = h.server.port, h.server.limits
            with collector_off() as left_in_cycles:
                answers = await exchange(
                    port,
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                assert answers.count(b"HTTP/1.1 ") == 2 and b" 404 " in answers
                too_large = f"Content-Length: {limits.max_body_bytes + 1}".encode()
                answers = await exchange(
                    port, b"POST /api/conversations HTTP/1.1\r\nHost: x\r\n" + too_large + b"\r\n\r\n"
                )
                assert answers.startswith(b"HTTP/1.1 413 ")
                answers = await exchange(
                    port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * (limits.max_pipelined_requests + 1)
                )
                assert answers.count(b"HTTP/1.1 200 ") == limits.max_pipelined_requests  # the rest unread
                with pytest.raises(websockets.InvalidStatus) as refused:
                    await websockets.connect(h.url, additional_headers={"Authorization": "Bearer nonsense"})
                assert refused.value.response.status_code == 401
                async with websockets.connect(h.url, additional_headers={"Authorization": f"Bearer {token('dan')}"}):
                    pass
                await gone(h)
                assert left_in_cycles() == []

    run(main())


class NeverAnswers(Handler):
    """Plain HTTP answered asynchronously, by an answer that never comes."""

    def on_http(self, request: Request) -> Awaitable[Response]:
        return asyncio.get_running_loop().create_future()


def test_an_http_answer_cut_short_by_the_sockets_end_leaves_nothing_in_reference_cycles(run: Run) -> None:
    """A request whose answer is still awaited when the socket ends (here the sweep drops it
    past its lifetime and the close timeout): the awaiting, cancelled, goes with the socket."""

    async def main() -> None:
        limits = Limits(http_lifetime_s=0.1, close_timeout_s=0.1)
        async with running(NeverAnswers(), limits=limits) as server:
            with collector_off() as left_in_cycles:
                answers = await exchange(server.port, b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                assert answers == b""  # dropped, unanswered
                while server._sockets:
                    await asyncio.sleep(0.01)
                assert left_in_cycles() == []

    run(main())


def test_sends_and_loads_that_storage_fails_leave_nothing_in_reference_cycles(
    run: Run, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage down: a send answered `unavailable` (its batch failed, or its conversation's members
    could not be loaded), and a `sync` by a user whose conversations could not be loaded. The
    failures' errors hold the frames they passed through; none of those frames may hold the
    future the error came from, or the sessions wait in that cycle."""

    async def main() -> None:
        async with chat_server(database_url) as h:
            alice = await h.connect("alice")
            cid = await alice.create("bob")
            with collector_off() as left_in_cycles:

                async def down(*args: object) -> None:
                    raise StoreUnavailable("storage is down (this test)")

                monkeypatch.setattr(h.store, "append", down)
                monkeypatch.setattr(h.store, "conversation_ids", down)
                payload = {"conversation_id": cid, "content": "lost?", "client_id": "c1"}
                reply = await alice.request("chat:send", payload)
                assert reply["payload"]["code"] == "unavailable"
                h.chat.hub.drop_cached_members()  # the next send must load the members, and cannot
                monkeypatch.setattr(h.store, "members", down)
                reply = await alice.request("chat:send", {**payload, "client_id": "c2"})
                assert reply["payload"]["code"] == "unavailable"
                erin = await h.connect("erin")  # her conversations cannot be loaded: not when she
                reply = await erin.request("sync", {"cursors": {}})  # comes, nor when she asks
                assert reply["payload"]["code"] == "unavailable"
                monkeypatch.undo()
                await alice.ws.close()
                await erin.ws.close()
                await gone(h)
                assert left_in_cycles() == []
                assert alive() == []

    run(main())

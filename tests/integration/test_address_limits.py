"""Per-address limits over real sockets (docs/protocol.md, "Limits"): new WebSocket connections
per second and open ones per client address answer 429 with `Retry-After`, and behind a trusted
proxy the address is the one `X-Forwarded-For` names; from anyone else the header is ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import websockets

from sohbet.ws.addresses import OVER_LIMIT_ANSWERED, parse_networks
from sohbet.ws.codes import CloseCode
from sohbet.ws.config import Limits
from sohbet.ws.server import Server

from ..chatkit import Harness, chat_server, token
from .conftest import RawClient, Recorder, http, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]


async def upgrade(h: Harness, user: str = "u", **headers: str) -> Any:
    """Open a WebSocket; return it, or the HTTP response that refused it."""
    try:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{h.server.port}/ws",
            additional_headers={"Authorization": f"Bearer {token(user)}", **headers},
        )
    except websockets.InvalidStatus as exc:
        return exc.response
    await ws.recv()  # hello
    return ws


def test_new_connections_per_second_from_one_address(run: Run, tmp_path: Any) -> None:
    limits = Limits(address_rate_per_s=0.5, address_burst=3)

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            opened = [await upgrade(h, f"u{n}") for n in range(3)]
            assert all(isinstance(ws, websockets.ClientConnection) for ws in opened)
            refused = await upgrade(h, "u3")
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
            assert b'"code":"rate_limited"' in refused.body and b"new connections per second" in refused.body
            # A bad token from an address over its rate: 429 first, no signature is checked for it.
            assert (await upgrade(h, Authorization="Bearer forged")).status_code == 429
            # Plain HTTP is not counted: health checks and the API go on.
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{h.server.port}/healthz") as r:
                assert r.status == 200
            for ws in opened:
                await ws.close()

    run(main())


def test_open_connections_per_address(run: Run, tmp_path: Any) -> None:
    limits = Limits(max_connections_per_address=2)

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            first, second = await upgrade(h, "a"), await upgrade(h, "b")
            refused = await upgrade(h, "c")
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert b"holds 2 connections" in refused.body
            await first.close()
            async with asyncio.timeout(5):  # the close reaches the server, then the address has room
                while h.server.addresses.open_count("127.0.0.1") != 1:
                    await asyncio.sleep(0.01)
            third = await upgrade(h, "c")
            assert isinstance(third, websockets.ClientConnection)
            for ws in (second, third):
                await ws.close()

    run(main())


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_apart(
    run: Run, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(max_connections_per_address=1, trusted_proxies=parse_networks("127.0.0.0/8"))
    caplog.set_level(logging.INFO, logger="sohbet.conn")

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            one = await upgrade(h, "a", **{"X-Forwarded-For": "198.51.100.1"})
            two = await upgrade(h, "b", **{"X-Forwarded-For": "198.51.100.2, 127.0.0.1"})
            assert isinstance(one, websockets.ClientConnection) and isinstance(two, websockets.ClientConnection)
            again = await upgrade(h, "c", **{"X-Forwarded-For": "198.51.100.1"})
            assert again.status_code == 429 and b"198.51.100.1 holds 1 connections" in again.body
            assert sorted(h.server.addresses.addresses) == ["198.51.100.1", "198.51.100.2"]
            for ws in (one, two):
                await ws.close()

    run(main())
    # The log names the client the proxy forwarded, not the proxy.
    opened = [r for r in caplog.records if r.getMessage() == "connection opened"]
    assert sorted(r.__dict__["addr"] for r in opened) == ["198.51.100.1", "198.51.100.2"]


def test_an_untrusted_peer_cannot_choose_its_address(run: Run, tmp_path: Any) -> None:
    limits = Limits(max_connections_per_address=1, trusted_proxies=parse_networks("10.0.0.0/8"))

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            one = await upgrade(h, "a", **{"X-Forwarded-For": "198.51.100.1"})
            other = await upgrade(h, "b", **{"X-Forwarded-For": "198.51.100.2"})
            assert other.status_code == 429 and b"127.0.0.1 holds 1 connections" in other.body
            await one.close()

    run(main())


def test_the_origin_check_comes_before_the_address_limits(run: Run, tmp_path: Any) -> None:
    limits = Limits(address_rate_per_s=0.01, address_burst=1)

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            h.server.websocket = h.server.websocket.__class__(
                subprotocols=("sohbet.v1",), allowed_origins=frozenset({"https://chat.example"})
            )
            ok = await upgrade(h, "a", Origin="https://chat.example")
            assert isinstance(ok, websockets.ClientConnection)
            assert (await upgrade(h, "b", Origin="https://evil.example")).status_code == 403  # 403 first
            assert (await upgrade(h, "b", Origin="https://chat.example")).status_code == 429
            await ok.close()

    run(main())


async def plain_socket(h: Harness) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A kept-alive HTTP socket that has asked for /healthz once; its answer's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return reader, writer, await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


def test_a_clients_plain_sockets_count_toward_its_address_too(run: Run, tmp_path: Any) -> None:
    """Without it one address could hold every socket the process may open, HTTP ones."""
    limits = Limits(max_connections_per_address=3)

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            held = [await plain_socket(h) for _ in range(2)]
            assert all(head.startswith(b"HTTP/1.1 200 ") for _, _, head in held)
            ws = await upgrade(h, "a")  # the third
            assert isinstance(ws, websockets.ClientConnection)
            reader, writer, head = await plain_socket(h)  # the fourth: refused at its first request
            assert head.startswith(b"HTTP/1.1 429 ") and b"Retry-After: 1" in head
            assert b"127.0.0.1 holds 3 connections" in await asyncio.wait_for(reader.read(), 5)
            writer.close()
            refused = await upgrade(h, "b")
            assert refused.status_code == 429
            _, first, _ = held[0]
            first.close()  # one gone: room for one
            async with asyncio.timeout(5):
                while h.server.addresses.open_count("127.0.0.1") != 2:
                    await asyncio.sleep(0.01)
            again = await upgrade(h, "b")
            assert isinstance(again, websockets.ClientConnection)
            for _, writer, _ in held[1:]:
                writer.close()
            await ws.close()
            await again.close()

    run(main())


def test_a_proxys_plain_sockets_are_not_counted_against_its_clients(run: Run, tmp_path: Any) -> None:
    limits = Limits(max_connections_per_address=1, trusted_proxies=parse_networks("127.0.0.1"))

    async def main() -> None:
        async with chat_server(f"sqlite:///{tmp_path}/db.sqlite", limits=limits) as h:
            held = [await plain_socket(h) for _ in range(3)]  # a proxy's kept-alive upstream sockets
            assert all(head.startswith(b"HTTP/1.1 200 ") for _, _, head in held)
            one = await upgrade(h, "a", **{"X-Forwarded-For": "2001:db8:1:2::1"})
            assert isinstance(one, websockets.ClientConnection)
            same_host = await upgrade(h, "b", **{"X-Forwarded-For": "2001:db8:1:2::77"})  # the same /64
            assert same_host.status_code == 429 and b"holds 1 connections" in same_host.body
            for _, writer, _ in held:
                writer.close()
            await one.close()

    run(main())


async def hold_sockets(server: Server, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open *n* sockets that send nothing; return once the server has taken each of them in."""
    before = len(server._sockets)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(n)]
    async with asyncio.timeout(5):
        while len(server._sockets) < before + n:
            await asyncio.sleep(0.01)
    return held


@pytest.mark.parametrize(
    ("limits", "status"),
    [(Limits(max_connections_per_address=2), b"429"), (Limits(max_connections=2), b"503")],
    ids=["per-address", "server"],
)
def test_sockets_far_past_a_limit_are_closed_unanswered(run: Run, limits: Limits, status: bytes) -> None:
    """However fast one address opens sockets, it holds no more than the limit and the 16 more
    answered why: past those a socket is closed at once, so no client can hold every file the
    process may open (20,000 here) with sockets that never speak."""

    async def main() -> None:
        async with running(limits=limits) as server:
            held = await hold_sockets(server, 2 + OVER_LIMIT_ANSWERED)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without a word
            writer.close()
            assert server.stats.dropped == 1 and len(server._sockets) == 2 + OVER_LIMIT_ANSWERED
            # One of those over the limit is answered at its request's head: the 100 MB it
            # announces is never waited for, nor invited with a 100 Continue.
            over_reader, over_writer = held[-1]
            over_writer.write(
                b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n"
            )
            answer = await asyncio.wait_for(over_reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
            for _, w in held:
                w.close()

    run(main())


def test_a_lingering_socket_still_counts_toward_its_address(run: Run) -> None:
    """A WebSocket the server has closed but whose peer keeps the TCP connection open (the
    lingering close) still holds a file: it counts until the socket is gone."""
    limits = Limits(max_connections_per_address=1, linger_s=60.0, linger_bytes=0)

    async def main() -> None:
        async with running(Recorder(echo=False), limits=limits) as server:
            client = await RawClient.connect(server.port)
            client.close()
            await client.expect_close(CloseCode.NORMAL)
            await client.expect_eof()  # the server's FIN: lingering now, until the peer hangs up
            assert server.connections == {} and len(server._sockets) == 1
            status, _, body = await http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 429 and b"127.0.0.1 holds 1 connections" in body
            client.abort()
            async with asyncio.timeout(5):
                while server.addresses.open_count("127.0.0.1"):
                    await asyncio.sleep(0.01)
            # `Connection: close`: a kept-alive answer would close only at the idle limit (5 s, seen
            # by a sweep each second), a race with `http`'s own 5 s read.
            status, _, _ = await http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status == 404

    run(main())

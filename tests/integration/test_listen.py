"""Where a server listens: an IP address is bound by the server itself (`numeric_listener`), a
name by the event loop; both serve, and a taken port is a clear error."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import websockets

from sohbet.ws.server import Server

from .conftest import Recorder

Run = Callable[[Coroutine[Any, Any, Any]], Any]


async def echo_once(url: str) -> Any:
    async with websockets.connect(url) as ws:
        await ws.send("hello")
        return await asyncio.wait_for(ws.recv(), 5)


ADDRESSES = [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]"), ("localhost", "localhost")]


@pytest.mark.parametrize(("host", "url_host"), ADDRESSES)
def test_an_address_or_a_name_serves(run: Run, host: str, url_host: str) -> None:
    async def main() -> None:
        server = Server(Recorder())
        await server.start(host, 0)
        try:
            assert await echo_once(f"ws://{url_host}:{server.port}/") == "hello"
        finally:
            await server.shutdown(timeout_s=2.0)

    run(main())


def test_an_ipv6_address_listens_on_ipv6_only(run: Run) -> None:
    """`::` means IPv6 alone, as the loop's own listener makes it: IPv4 is a second address."""

    async def main() -> None:
        server = Server(Recorder())
        await server.start("::", 0)
        try:
            listening = server._listener.sockets[0] if server._listener else None
            assert listening is not None and listening.family == socket.AF_INET6
            assert listening.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        finally:
            await server.shutdown(timeout_s=2.0)

    run(main())


def test_a_taken_port_is_a_clear_error(run: Run) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = Server(Recorder())
            with pytest.raises(OSError) as raised:
                await server.start("127.0.0.1", port)
            assert raised.value.errno == errno.EADDRINUSE
            assert f"cannot listen on 127.0.0.1:{port}" in str(raised.value)

    run(main())

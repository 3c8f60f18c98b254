"""Interoperability with independent clients: websockets, aiohttp, and Chromium's own WebSocket.

A bug shared by our server and our own client could cancel out; these peers share no code
with us.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import pytest
import websockets
from playwright.async_api import async_playwright
from websockets.asyncio.client import connect

from sohbet.echo import ECHO_LIMITS
from sohbet.ws.config import CompressionConfig, WebSocketConfig
from sohbet.ws.server import WebSocket

from ..conftest import IN_CI
from .conftest import Recorder, get, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
DEFLATE = WebSocketConfig(compression=CompressionConfig(enabled=True, window_bits=15))
CHROMIUM = "/usr/bin/chromium"


class Closer(Recorder):
    """Echoes, and closes with 4001 when told to."""

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:
        if data == b"close me":
            ws.close(4001, "token expired")
        else:
            super().on_message(ws, data, is_text)


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflate"])
def test_websockets_client(run: Run, compression: str | None) -> None:
    async def main() -> None:
        handler = Closer()
        async with running(handler, limits=ECHO_LIMITS, websocket=DEFLATE) as server:
            url = f"ws://127.0.0.1:{server.port}/ws"
            async with connect(url, compression=compression, max_size=None) as ws:
                negotiated = ws.response.headers.get("Sec-WebSocket-Extensions")
                assert (negotiated is not None) == (compression is not None)
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                await ws.send(b"\x00" * 10)
                assert await ws.recv() == b"\x00" * 10
                big = os.urandom(1 << 20)
                await ws.send(big)
                assert await ws.recv() == big
                await ws.send(["frag", "mented", " text"])  # sent as three fragments
                assert await ws.recv() == "fragmented text"
                latency = await (await ws.ping(b"are you there"))
                assert latency >= 0
            assert (await get(handler.closed))[1] == 1000
            async with connect(url, compression=compression) as ws:
                await ws.send("close me")
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "token expired")

    run(main())


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
def test_aiohttp_client(run: Run, compress: int) -> None:
    async def main() -> None:
        handler = Closer()
        async with running(handler, limits=ECHO_LIMITS, websocket=DEFLATE) as server:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{server.port}/ws"
                async with session.ws_connect(url, compress=compress, max_msg_size=0) as ws:
                    assert (ws.compress != 0) == bool(compress)
                    await ws.send_str("héllo")
                    assert await ws.receive_str() == "héllo"
                    payload = os.urandom(300_000)
                    await ws.send_bytes(payload)
                    assert await ws.receive_bytes() == payload
                    await ws.send_str("close me")
                    msg = await ws.receive()
                    assert msg.type == aiohttp.WSMsgType.CLOSE
                    assert ws.close_code == 4001
            assert (await get(handler.closed))[1] == 4001

    run(main())


BROWSER_SCRIPT = """
async (url) => {
    const ws = new WebSocket(url, ["sohbet.v1", "other"]);
    ws.binaryType = "arraybuffer";
    const opened = await new Promise((ok, fail) => { ws.onopen = () => ok(true); ws.onerror = () => fail("error"); });
    const next = () => new Promise((ok) => { ws.onmessage = (e) => ok(e.data); });
    ws.send("héllo 👋");
    const text = await next();
    ws.send(new Uint8Array([0, 1, 2, 255]).buffer);
    const bin = Array.from(new Uint8Array(await next()));
    const big = "x".repeat(200000);
    ws.send(big);
    const echoedBig = (await next()).length;
    const closed = new Promise((ok) => { ws.onclose = (e) => ok([e.code, e.reason, e.wasClean]); });
    ws.close(1000, "bye");
    return {opened, text, bin, echoedBig, extensions: ws.extensions, protocol: ws.protocol, close: await closed};
}
"""


def test_chromium_websocket_with_compression(run: Run) -> None:
    if not shutil.which(CHROMIUM):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing; CI must run the browser interop test (apt install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt install chromium)")

    async def main() -> None:
        handler = Recorder()
        websocket = WebSocketConfig(subprotocols=("sohbet.v1",), compression=CompressionConfig(enabled=True))
        async with running(handler, limits=ECHO_LIMITS, websocket=websocket) as server:
            async with async_playwright() as p:
                browser = await p.chromium.launch(
                    executable_path=CHROMIUM,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
                )
                page = await browser.new_page()
                result = await page.evaluate(BROWSER_SCRIPT, f"ws://127.0.0.1:{server.port}/ws")
                await browser.close()
            assert result["opened"] is True
            assert result["text"] == "héllo 👋"
            assert result["bin"] == [0, 1, 2, 255]
            assert result["echoedBig"] == 200000
            assert result["extensions"].startswith("permessage-deflate")
            assert result["protocol"] == "sohbet.v1"
            assert result["close"] == [1000, "", True]  # we echo the code, not the reason (RFC 6455 §5.5.1)
            assert (await get(handler.closed))[1:] == (1000, "bye")

    run(main())

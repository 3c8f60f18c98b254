"""Echo servers of other libraries, on uvloop, for side-by-side runs with `python -m sohbet.echo`.

    python benchmarks/echo_peers.py picows --port 9002
    python benchmarks/echo_peers.py websockets --port 9003
    python benchmarks/echo_peers.py aiohttp --port 9004

Each echoes text and binary messages back unchanged, with its library's default limits raised
to 16 MiB, and no compression (the load generator does not offer it).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvloop
from aiohttp import WSMsgType as AiohttpMsgType
from aiohttp import web
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve


async def picows_server(host: str, port: int) -> None:
    class Echo(WSListener):  # type: ignore[misc]  # picows ships no stubs for subclassing
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview())

    server = await ws_create_server(lambda _request: Echo(), host, port, max_frame_size=1 << 24)
    await server.serve_forever()


async def websockets_server(host: str, port: int) -> None:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with websockets_serve(echo, host, port, max_size=1 << 24, compression=None) as server:
        await server.serve_forever()


async def aiohttp_server(host: str, port: int) -> None:
    async def handler(request: web.Request) -> Any:
        ws = web.WebSocketResponse(max_msg_size=1 << 24, compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == AiohttpMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == AiohttpMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("impl", choices=["picows", "websockets", "aiohttp"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve = {"picows": picows_server, "websockets": websockets_server, "aiohttp": aiohttp_server}[args.impl]
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

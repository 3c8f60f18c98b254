"""`python -m sohbet.echo`: the WebSocket core as a plain echo server.

Layer: transport. Imports the ws layer only. Used for conformance runs (Autobahn|Testsuite) and
benchmarks, so its limits are the generous ones those need (16 MiB messages, no fragment or
frame-rate cap), and permessage-deflate is on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop

from sohbet.ws.config import CompressionConfig, Limits, WebSocketConfig
from sohbet.ws.frames import IMPLEMENTATION
from sohbet.ws.server import Handler, WebSocket, serve

__all__ = ["ECHO_LIMITS", "EchoHandler", "main"]

ECHO_LIMITS = Limits(
    max_message_bytes=16 * 1024 * 1024,
    max_fragments=0,
    max_frames_per_10s=0,
    max_buffered_bytes=64 * 1024 * 1024,
    buffer_high_water_bytes=1024 * 1024,
    message_timeout_s=60.0,
)

log = logging.getLogger("sohbet.echo")


class EchoHandler(Handler):
    """Send every message back as it came."""

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:  # see Handler
        if is_text:
            ws.send_text(data)
        else:
            ws.send_binary(data)


async def run(host: str, port: int, compression: bool) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    websocket = WebSocketConfig(compression=CompressionConfig(enabled=compression, window_bits=15, mem_level=8))
    server = await serve(EchoHandler(), host, port, limits=ECHO_LIMITS, websocket=websocket)
    log.info("echo server on ws://%s:%d/ (frame core: %s)", host, server.port, IMPLEMENTATION)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the echo server."""
    parser = argparse.ArgumentParser(prog="python -m sohbet.echo", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--no-compression", action="store_true", help="do not negotiate permessage-deflate")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvloop.run(run(args.host, args.port, not args.no_compression))


if __name__ == "__main__":
    main()

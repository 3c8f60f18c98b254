"""A minimal picows server that broadcasts: the peer of chat_bench.py's fan-out benchmark.

Every connection gets a hello; a text message containing "broadcast" is sent by picows to every
other connection (picows frames it per connection, as its API does). It prints
`delivered <ms> <connections>` for each broadcast, timed like fanout_server.py.
"""

from __future__ import annotations

import argparse
import time

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

TRANSPORTS: set[WSTransport] = set()
#: A chat:message as sohbet sends one in chat_bench.py's fan-out, field for field and within a few
#: bytes of its length: the kernel's work a delivery grows with the bytes sent (~4% from 67 to 185).
PAYLOAD = (
    b'{"type":"chat:message","payload":{"message":{"id":1,"conversation_id":1,"seq":1,"sender_id":"sender",'
    b'"content":"to all 0","client_id":"f0","created_at":"2026-12-08T00:00:00.000Z"}}}'
)


class Member(WSListener):  # type: ignore[misc]  # picows ships no stubs for subclassing
    def on_ws_connected(self, transport: WSTransport) -> None:
        TRANSPORTS.add(transport)
        transport.send(WSMsgType.TEXT, b'{"type":"hello","payload":{}}')

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        TRANSPORTS.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and b"broadcast" in frame.get_payload_as_bytes():
            payload = PAYLOAD
            start = time.perf_counter()
            count = 0
            for other in TRANSPORTS:
                if other is not transport:
                    other.send(WSMsgType.TEXT, payload)
                    count += 1
            print(f"delivered {(time.perf_counter() - start) * 1000:.3f} {count}", flush=True)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


async def main(port: int) -> None:
    server = await ws_create_server(lambda _request: Member(), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))

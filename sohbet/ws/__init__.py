"""The WebSocket layer: RFC 6455 and HTTP/1.1, and nothing of chat.

Layer: ws. Everything here but `server.py`, `websocket.py` and `http_phase.py` (the
asyncio/uvloop transport) is sans-I/O: bytes in, events and bytes out, no socket, no clock, no
asyncio. Someone who wants only a fast WebSocket server reads this folder alone;
`sohbet.ws.server.serve` is where to start.
"""

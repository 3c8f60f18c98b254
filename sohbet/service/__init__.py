"""The application layer: protocol v1 requests in, storage and hub updates, replies and events out.

Layer: service. Imports asyncio, the chat domain, `sohbet.auth`, `sohbet.config` and the store
(and, from step 8, broker) interfaces only; the composition root (`sohbet.app`) hands it the
implementations. One module per family of requests, each registering its handlers. Handlers
take a `Session` and an `Envelope` and answer through the session's socket; step 6 separates
each operation from its WebSocket reply, so the HTTP API calls the same rules, written once.
"""

from __future__ import annotations

from sohbet.service.dispatch import ChatService
from sohbet.service.session import Clock, LoopClock, Outbox, Session, Socket

__all__ = ["ChatService", "Clock", "LoopClock", "Outbox", "Session", "Socket"]

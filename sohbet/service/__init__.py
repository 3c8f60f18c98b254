"""The application layer: protocol v1 requests in, storage and hub updates, replies and events out.

Layer: service. Imports asyncio, the chat domain, `sohbet.auth`, `sohbet.config` and the store
(and, from step 8, broker) interfaces only; the composition root (`sohbet.app`) hands it the
implementations. One module per family of requests, each registering its handlers. Handlers
take a `Session` and an `Envelope` and answer through the session (`Session.answer`): a
connection's session writes to its socket, an HTTP API call's (`Call`) hands the answer back to
the API, so both run the same rules, written once. `backend.py` adds what only the application's
backend may do.
"""

from __future__ import annotations

from sohbet.service.dispatch import ChatService
from sohbet.service.session import Call, Clock, LoopClock, Outbox, Session, Socket

__all__ = ["Call", "ChatService", "Clock", "LoopClock", "Outbox", "Session", "Socket"]

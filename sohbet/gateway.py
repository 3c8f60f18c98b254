"""The chat server's face to the network: authentication at the upgrade, callbacks to the chat
service, and the plain HTTP endpoints on the same port.

Layer: transport. Glues `server` (sockets) to `chat` (the service); `cli.py` builds both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from urllib.parse import parse_qs

from sohbet.auth import Identity
from sohbet.errors import AuthError, InvalidHandshake, StoreError
from sohbet.service import ChatService, Session, Socket
from sohbet.ws.handshake import Upgrade
from sohbet.ws.http11 import Request
from sohbet.ws.server import Handler, Response, WebSocket, broadcast

__all__ = ["ChatGateway", "ServerOutbox", "token_of"]

log = logging.getLogger("sohbet.gateway")

_BEARER_PROTOCOL = "bearer."


def token_of(request: Request, offered_subprotocols: Iterable[str]) -> str:
    """Find the token in the first place that has one (PROTOCOL.md, "Connecting").

    The `Authorization` header, then a `bearer.<jwt>` subprotocol, then `?token=`. A bad token
    in the first place found is a 401: there is no fallback to the next.

    Raises:
        InvalidHandshake: 401 when no place holds a token.
    """
    header = request.header("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise InvalidHandshake(401, "Authorization header must be 'Bearer <token>'")
        return value.strip()
    for offered in offered_subprotocols:
        if offered.startswith(_BEARER_PROTOCOL):
            return offered[len(_BEARER_PROTOCOL) :]
    tokens = parse_qs(request.query).get("token")
    if tokens:
        return tokens[0]
    raise InvalidHandshake(401, "no token: send Authorization: Bearer, a bearer.<jwt> subprotocol or ?token=")


class ChatGateway(Handler):
    """Routes a server's callbacks to the chat service."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.accepting = False  # /healthz answers 200 once connections are accepted

    # -- WebSocket ------------------------------------------------------------------------------

    def accept(self, request: Request, upgrade: Upgrade) -> object:  # see Handler
        token = token_of(request, upgrade.offered_subprotocols)
        try:
            return self.chat.verify(token)
        except AuthError as exc:
            raise InvalidHandshake(401, str(exc)) from None

    def on_open(self, ws: WebSocket) -> None:  # see Handler
        identity = ws.data
        assert isinstance(identity, Identity)  # what accept() returned
        ws.data = self.chat.open(ws, identity)

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:  # see Handler
        session = ws.data
        if not isinstance(session, Session):
            return  # refused in on_open (too many connections): it is closing
        if not is_text:
            ws.close(1003, "binary frames are not accepted; send JSON text")
            return
        self.chat.received(session, data)

    def on_close(self, ws: WebSocket, code: int, reason: str) -> None:  # see Handler
        session = ws.data
        if isinstance(session, Session):
            self.chat.closed(session)

    # -- HTTP -----------------------------------------------------------------------------------

    def on_http(self, request: Request) -> Response | Awaitable[Response]:  # see Handler
        if request.path == "/healthz":
            if self.accepting:
                return Response(200, b'{"status":"ok"}')
            return Response(503, b'{"error":{"code":"unavailable","message":"starting or stopping"}}')
        if request.path == "/readyz":
            return self._ready()
        if request.path == "/ws":
            return Response(
                426,
                b'{"error":{"code":"bad_request","message":"this endpoint speaks WebSocket; send an upgrade"}}',
                headers=(("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")),
            )
        return super().on_http(request)

    async def _ready(self) -> Response:
        try:
            await self.chat.store.ping()
        except StoreError:
            return Response(503, b'{"error":{"code":"unavailable","message":"storage is unreachable"}}')
        return Response(200, b'{"status":"ready"}')


class ServerOutbox:
    """The chat service's `Outbox`: frame once, write to every connection."""

    def deliver(self, sockets: Iterable[Socket], data: bytes, *, skip: Socket | None = None) -> int:  # see Outbox
        return broadcast(sockets, data, skip=skip)  # type: ignore[arg-type]  # the sockets are this server's WebSockets

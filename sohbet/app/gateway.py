"""The chat server's face to the network: authentication at the upgrade, callbacks to the chat
service, and the health endpoints on the same port.

Layer: entry. Glues `sohbet.ws.server` (sockets) to `sohbet.service` (the chat service);
`compose.py` builds both. Plain HTTP goes through a route table (`sohbet.api.router.Router`),
to which the HTTP API (`sohbet.api.endpoints`) and `/metrics` add their routes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Final, Generic, TypeVar
from urllib.parse import parse_qs

from sohbet.api.router import ANY_METHOD, Router
from sohbet.auth import Identity
from sohbet.errors import AuthError, InvalidHandshake, StoreError, StoreUnavailable
from sohbet.service import ChatService, Session, Socket
from sohbet.ws.codes import CloseCode
from sohbet.ws.handshake import WEBSOCKET_VERSION, Upgrade
from sohbet.ws.http11 import Request, error_body
from sohbet.ws.http_phase import retry_busy
from sohbet.ws.server import Handler, Response, WebSocket, broadcast

__all__ = ["READY_CACHE_S", "READY_TIMEOUT_S", "ChatGateway", "ServerOutbox", "Shared", "token_of"]

_BEARER_PROTOCOL: Final = "bearer."
#: Seconds a `/readyz` answer is reused: the endpoint is unauthenticated, and each check costs
#: a database round trip, so a flood of probes costs one query a second.
READY_CACHE_S: Final = 1.0
#: Seconds `/readyz` waits for the database before it answers 503: a probe must not hang.
READY_TIMEOUT_S: Final = 2.0

T = TypeVar("T")
#: One line per connection opened and closed: who, which connection, why it closed.
conn_log = logging.getLogger("sohbet.conn")


class Shared(Generic[T]):
    """One check at a time, shared by every caller that asks while it runs, its result kept
    for `ttl_s` after it ends (single-flight with a short cache)."""

    def __init__(self, check: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._check = check
        #: Seconds a result is reused; a test may change it.
        self.ttl_s = ttl_s
        self._running: asyncio.Future[T] | None = None
        self._result: T | None = None
        self._at = 0.0  # when the result came

    async def get(self) -> T:
        """The latest result, or the one of the check running now (one is started if none)."""
        loop = asyncio.get_running_loop()
        if self._result is not None and loop.time() < self._at + self.ttl_s:
            return self._result
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        # Shielded: a caller that goes away (its socket closed) must not cancel the others' check.
        return await asyncio.shield(self._running)

    async def _run(self) -> T:
        try:
            result = await self._check()
        finally:
            self._running = None
        self._result = result
        self._at = asyncio.get_running_loop().time()
        return result


def token_of(request: Request, offered_subprotocols: Iterable[str]) -> str:
    """Find the token in the first place that has one (docs/protocol.md, "Connecting").

    The `Authorization` header, then a `bearer.<jwt>` subprotocol, then `?token=`. A bad token
    in the first place found is a 401: there is no fallback to the next.

    Raises:
        InvalidHandshake: 401 when no place holds a token.
    """
    credential = request.bearer
    if credential is not None:
        if not credential:
            raise InvalidHandshake(HTTPStatus.UNAUTHORIZED, "Authorization header must be 'Bearer <token>'")
        return credential
    for offered in offered_subprotocols:
        if offered.startswith(_BEARER_PROTOCOL):
            return offered[len(_BEARER_PROTOCOL) :]
    tokens = parse_qs(request.query).get("token")
    if tokens:
        return tokens[0]
    raise InvalidHandshake(
        HTTPStatus.UNAUTHORIZED, "no token: send Authorization: Bearer, a bearer.<jwt> subprotocol or ?token="
    )


class ChatGateway(Handler):
    """Routes a server's callbacks to the chat service."""

    def __init__(self, chat: ChatService) -> None:
        self.chat = chat
        self.accepting = False  # /readyz answers 200 only while connections are accepted
        self.routes = Router()
        #: Whether storage answers, checked once for all concurrent `/readyz` and reused briefly.
        self.readiness = Shared(self._storage_answers, READY_CACHE_S)
        self.routes.add("GET", "/healthz", self._health)
        self.routes.add("GET", "/readyz", self._ready)
        self.routes.add(ANY_METHOD, "/ws", self._not_upgraded)

    # -- WebSocket ------------------------------------------------------------------------------

    def accept(self, request: Request, upgrade: Upgrade) -> object:  # see Handler
        chat = self.chat
        token = token_of(request, upgrade.offered_subprotocols)
        try:
            identity = chat.verify(token)
        except AuthError as exc:
            raise InvalidHandshake(HTTPStatus.UNAUTHORIZED, str(exc)) from None
        if chat.is_admitting_full:
            # A reconnect storm: as many connections as allowed are reading storage to be
            # admitted. Shed this one with a Retry-After rather than queue unbounded reads behind
            # the others. After the token, as the protocol orders the checks (401 before 503): a
            # client with a bad token must learn that, not retry; a signature check costs
            # microseconds, the storage reads it spares are the storm's cost.
            limit = chat.ctx.config.max_admitting
            raise InvalidHandshake(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"{limit} users' connections are being admitted, the most at once; retry later",
                retry_busy(),
            )
        return identity

    def on_open(self, ws: WebSocket) -> None:  # see Handler
        identity = ws.data
        assert isinstance(identity, Identity)  # what accept() returned
        conn_log.info("connection opened", extra={"conn": ws.id, "user": identity.user_id, "addr": ws.address})
        session = self.chat.open(ws, identity)
        # Refused (too many connections for the user): it is closing, and keeps its identity for the log.
        ws.data = identity if session is None else session

    def on_message(self, ws: WebSocket, data: bytes, is_text: bool) -> None:  # see Handler
        session = ws.data
        if not isinstance(session, Session):
            return  # refused in on_open (too many connections): it is closing
        if not is_text:
            ws.close(CloseCode.UNSUPPORTED_DATA, "binary frames are not accepted; send JSON text")
            return
        self.chat.received(session, data)

    def on_close(self, ws: WebSocket, code: int, reason: str) -> None:  # see Handler
        session = ws.data
        if isinstance(session, Session):
            self.chat.closed(session)
            user: str | None = session.user
        else:
            user = session.user_id if isinstance(session, Identity) else None
        conn_log.info(
            "connection closed",
            extra={"conn": ws.id, "user": user, "addr": ws.address, "code": code, "reason": reason},
        )

    # -- HTTP -----------------------------------------------------------------------------------

    def on_http(self, request: Request) -> Response | Awaitable[Response]:  # see Handler
        return self.routes.answer(request)

    def body_limit(self, head: Request) -> int | None:  # see Handler
        check = self.routes.body_limit
        return None if check is None else check(head)

    def _health(self, request: Request, params: dict[str, str]) -> Response:
        # The process is alive and answers (docs/protocol.md): a liveness probe that failed
        # while the server drains would have it killed before it has committed its queue.
        return _ALIVE

    async def _ready(self, request: Request, params: dict[str, str]) -> Response:
        if not self.accepting:  # starting, or shutting down: a load balancer sends nobody new
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, _STARTING_OR_STOPPING)
        if not await self.readiness.get():
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, _STORE_UNREACHABLE)
        broker = self.chat.broker
        if broker is not None and not broker.up:
            # It serves its own users, but what they send reaches no other instance live.
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, _BROKER_UNREACHABLE)
        return Response(HTTPStatus.OK, b'{"status":"ready"}')

    async def _storage_answers(self) -> bool:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self.chat.store.ping()
        except StoreError as exc:
            self.chat.ctx.storage_failed(exc)
            return False
        except TimeoutError:
            self.chat.ctx.storage_failed(StoreUnavailable(f"no answer within {READY_TIMEOUT_S:g} s"))
            return False
        self.chat.ctx.storage_answered()
        return True

    def _not_upgraded(self, request: Request, params: dict[str, str]) -> Response:
        return _NOT_UPGRADED


_ALIVE: Final = Response(HTTPStatus.OK, b'{"status":"ok"}')
_STARTING_OR_STOPPING: Final = error_body(HTTPStatus.SERVICE_UNAVAILABLE, "starting or stopping")
_STORE_UNREACHABLE: Final = error_body(HTTPStatus.SERVICE_UNAVAILABLE, "storage is unreachable")
_BROKER_UNREACHABLE: Final = error_body(
    HTTPStatus.SERVICE_UNAVAILABLE, "redis is unreachable: messages reach no other instance live"
)
_NOT_UPGRADED: Final = Response(
    HTTPStatus.UPGRADE_REQUIRED,
    error_body(HTTPStatus.UPGRADE_REQUIRED, "this endpoint speaks WebSocket; send an upgrade"),
    headers=(("Upgrade", "websocket"), ("Sec-WebSocket-Version", WEBSOCKET_VERSION)),
)


class ServerOutbox:
    """The chat service's `Outbox`: frame once, write to every connection."""

    def deliver(self, sockets: Iterable[Socket], data: bytes, *, skip: Socket | None = None) -> int:  # see Outbox
        return broadcast(sockets, data, skip=skip)  # type: ignore[arg-type]  # the sockets are this server's WebSockets

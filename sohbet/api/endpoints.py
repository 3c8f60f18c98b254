"""The HTTP API (docs/protocol.md, "HTTP API"): JSON endpoints on the chat server's port for the
application's backend (with the API key) and for users (with their JWT: the REST fallback of a
client that cannot hold a WebSocket).

Layer: transport. Imports the service, the domain and the ws layer's HTTP types; never a store.

An endpoint authenticates its caller, reads its JSON body or its query, calls one operation and
turns the answer, or the error, into a response. The operations are not written here: what a
user may do is the WebSocket request of the same name, run by `ChatService.request` (the same
validation, membership rules, rate limits and ack-after-commit), and what only the backend may
do is `service.backend.Backend`. Errors are `{"error": {"code", "message"}}` with the status of
their code (`STATUS_OF`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson

from sohbet.api import openapi
from sohbet.api.credentials import KnownSecret
from sohbet.api.router import RouteHandler, Router
from sohbet.chat import wire
from sohbet.chat.ids import MAX_ID, MAX_USER_ID_CHARS, ConversationId, UserId, is_user_id
from sohbet.chat.wire import RequestType
from sohbet.errors import AuthError, ErrorCode, MessageRejected, StoreError
from sohbet.service import ChatService
from sohbet.service.backend import Backend
from sohbet.service.session import Call
from sohbet.ws.http11 import Request, Response, error_body

__all__ = ["STATUS_OF", "ApiError", "HttpApi", "json_body"]

#: The HTTP status of each error code of the protocol.
STATUS_OF: Final[dict[ErrorCode, HTTPStatus]] = {
    ErrorCode.BAD_REQUEST: HTTPStatus.BAD_REQUEST,
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
}
_JSON: Final = "application/json"
#: Query parameters one request may carry: the endpoints read two or three.
_MAX_QUERY_FIELDS: Final = 16
_MAX_ID_DIGITS: Final = len(str(MAX_ID))
#: What a client told `unavailable` is asked to wait before retrying, in seconds.
_UNAVAILABLE_RETRY_S: Final = 1
_CHALLENGE: Final = (("WWW-Authenticate", "Bearer"),)
_RETRY_SOON: Final = (("Retry-After", str(_UNAVAILABLE_RETRY_S)),)
#: The part of the request timeout a send waits for its ack before answering 503 itself.
_SEND_SHARE: Final = 0.9

# Who may call an endpoint.
USER: Final = "user"
BACKEND: Final = "backend"
BOTH: Final = "both"

#: The caller of an endpoint: a user's id, or None for the application's backend.
Caller = UserId | None
Endpoint = Callable[[Request, dict[str, str], Caller], Awaitable[Response]]


class ApiError(Exception):
    """A request the API refuses before any operation runs: its status says why."""

    def __init__(self, status: HTTPStatus, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def _json(status: HTTPStatus, obj: dict[str, Any]) -> Response:
    return Response(status, orjson.dumps(obj))


def _refusal(exc: MessageRejected) -> Response:
    status = STATUS_OF[exc.code]
    headers: tuple[tuple[str, str], ...] = ()
    if exc.code == ErrorCode.RATE_LIMITED and exc.retry_after_ms is not None:
        headers = (("Retry-After", str(-(-exc.retry_after_ms // 1000))),)  # whole seconds, rounded up
    elif exc.code == ErrorCode.UNAVAILABLE:
        headers = (("Retry-After", str(_UNAVAILABLE_RETRY_S)),)
    return Response(status, error_body(status, str(exc), exc.retry_after_ms), headers=headers)


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object.

    Raises:
        ApiError: 415 for a body that is not `application/json`, 400 for one that is not a JSON object.
    """
    if not request.body:
        return {}
    media, _, options = (request.header("content-type") or "").partition(";")
    charset = options.strip().lower().removeprefix("charset=").strip('"')
    if media.strip().lower() != _JSON or (options.strip() and charset not in {"utf-8", "utf8"}):
        raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json (UTF-8)")
    try:
        obj = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    return obj


def _integer(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= _MAX_ID_DIGITS):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be a non-negative integer")
    return int(text)


def _query(request: Request, integers: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The query parameters, each at most once; those in *integers* as ints (their ranges are
    the operation's to check, as over the WebSocket)."""
    try:
        pairs = parse_qsl(request.query, keep_blank_values=True, max_num_fields=_MAX_QUERY_FIELDS, errors="strict")
    except UnicodeDecodeError:  # `%ff`: no text, where the default would make it U+FFFD
        raise ApiError(HTTPStatus.BAD_REQUEST, "the query is not percent-encoded UTF-8") from None
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"more than {_MAX_QUERY_FIELDS} query parameters") from None
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"query parameter {name[:32]!r} is repeated")
        found[name] = _integer(name, value) if name in integers else value
    return found


def _conversation(params: dict[str, str]) -> ConversationId:
    """The conversation id of the path, in the WebSocket's range (`wire.conversation_of`): 0 is
    well-formed, and names no conversation (403 for a user, 404 for the backend)."""
    return wire.conversation_of({"conversation_id": _integer("the conversation id", params["id"])})


def _user(params: dict[str, str]) -> UserId:
    user = params["user_id"]
    if not is_user_id(user):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"a user id is 1-{MAX_USER_ID_CHARS} characters, without U+0000")
    return UserId(user)


_PAGE_INTEGERS: Final = frozenset({"limit"})
_HISTORY_INTEGERS: Final = frozenset({"before_seq", "limit"})


class HttpApi:
    """The endpoints of the HTTP API, added to a server's route table by `register`."""

    def __init__(
        self,
        chat: ChatService,
        backend: Backend,
        api_key: str | None,
        *,
        request_timeout_s: float = 30.0,
        max_user_body_bytes: int | None = None,
    ) -> None:
        self.chat = chat
        self.backend = backend
        #: The most body bytes a request without the API key may carry (None: the server's
        #: `max_body_bytes`): a user's request is one WebSocket message's worth.
        self._max_user_body_bytes = max_user_body_bytes
        # A send gives up a little before the HTTP layer's own limit, so that its 503 can say
        # that the message may yet be stored, and with which client_id to retry.
        self._send_within_s = request_timeout_s * _SEND_SHARE
        self._api_key = None if api_key is None else KnownSecret(api_key)

    def register(self, router: Router) -> None:
        """Add every endpoint of the API to *router*, and its description (`openapi.PATH`)."""
        routes: list[tuple[str, str, str, Endpoint]] = [
            ("POST", "/api/conversations", BOTH, self._create),
            ("GET", "/api/conversations", USER, self._list),
            ("POST", "/api/conversations/{id}/members", BACKEND, self._add_member),
            ("DELETE", "/api/conversations/{id}/members/{user_id}", BACKEND, self._remove_member),
            ("POST", "/api/conversations/{id}/messages", BOTH, self._send),
            ("GET", "/api/conversations/{id}/messages", BOTH, self._history),
            ("POST", "/api/publish", BACKEND, self._publish),
            ("POST", "/api/broadcast", BACKEND, self._broadcast),
            ("GET", "/api/users/{user_id}/presence", BACKEND, self._presence),
            ("GET", "/api/presence", BACKEND, self._online),
            ("POST", "/api/users/{user_id}/disconnect", BACKEND, self._disconnect),
        ]
        for method, pattern, who, endpoint in routes:
            router.add(method, pattern, self._guarded(endpoint, who))
        openapi.register(router)
        router.body_limit = self._body_limit

    def _body_limit(self, head: Request) -> int | None:
        """Only the backend's requests may carry `max_body_bytes`: anyone else (a user, or
        anyone at all before a token is checked) sends no more than a WebSocket message, so
        that a stranger cannot make the server hold a megabyte per request it then refuses."""
        api_key, credential = self._api_key, head.bearer
        if api_key is not None and credential and api_key.matches(credential):
            return None
        return self._max_user_body_bytes

    def _guarded(self, endpoint: Endpoint, who: str) -> RouteHandler:
        """Authenticate the caller, run the endpoint, and answer every refusal with its status."""

        async def handle(request: Request, params: dict[str, str]) -> Response:
            try:
                return await endpoint(request, params, self._caller(request, who))
            except ApiError as exc:
                return Response(exc.status, error_body(exc.status, str(exc)), headers=exc.headers)
            except MessageRejected as exc:
                return _refusal(exc)
            except StoreError:
                return _refusal(MessageRejected(ErrorCode.UNAVAILABLE, "storage is unavailable; retry"))
            except Exception as exc:  # a bug: counted, its traceback logged once per place, answered 500
                ctx = self.chat.ctx
                ctx.bug(f"{request.method} {endpoint.__name__}", exc)
                ctx.stats.errors[ErrorCode.INTERNAL] += 1
                return _refusal(MessageRejected(ErrorCode.INTERNAL, "internal error"))

        return handle

    def _caller(self, request: Request, who: str) -> Caller:
        """Who is asking: the backend (None) or a user, from `Authorization: Bearer`.

        Raises:
            ApiError: 401 without a credential that verifies, or for a backend endpoint without
                the API key (also when none is configured); 403 for a user token on a backend
                endpoint, or the API key on an endpoint that acts as a user.
        """
        credential = request.bearer
        if not credential:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "send Authorization: Bearer <API key or user token>", _CHALLENGE)
        api_key = self._api_key
        if api_key is not None and api_key.matches(credential):
            if who == USER:
                raise ApiError(HTTPStatus.FORBIDDEN, "this endpoint acts as a user: send the user's token")
            return None
        if who == BACKEND and api_key is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "no API key is configured: this endpoint is off", _CHALLENGE)
        try:
            user = self.chat.verify(credential).user_id
        except AuthError as exc:
            raise ApiError(HTTPStatus.UNAUTHORIZED, str(exc), _CHALLENGE) from None
        if who == BACKEND:
            raise ApiError(HTTPStatus.FORBIDDEN, "this endpoint needs the API key")
        return user

    # -- conversations ------------------------------------------------------------------------

    async def _create(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        body = json_body(request)
        if caller is None:
            conversation = await self.backend.create(body)
            return _json(HTTPStatus.CREATED, {"conversation": wire.conversation_object(conversation)})
        return _json(HTTPStatus.CREATED, await self.chat.request(Call(caller), RequestType.CREATE, body))

    async def _list(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        assert caller is not None  # a user endpoint
        query = _query(request, _PAGE_INTEGERS)
        return _json(HTTPStatus.OK, await self.chat.request(Call(caller), RequestType.LIST, query))

    async def _add_member(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        conversation = await self.backend.add_member(_conversation(params), json_body(request))
        return _json(HTTPStatus.OK, {"conversation": wire.conversation_object(conversation)})

    async def _remove_member(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        await self.backend.remove_member(_conversation(params), _user(params))
        return Response(HTTPStatus.NO_CONTENT)

    # -- messages -----------------------------------------------------------------------------

    async def _send(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        conversation = _conversation(params)
        body = json_body(request)
        if body.get("client_id") is None:
            body["client_id"] = uuid.uuid4().hex  # optional here: a 503 names it, for a retry
        if caller is not None and "sender_id" in body:
            raise ApiError(HTTPStatus.BAD_REQUEST, "sender_id is for the API key: a user sends as themself")
        try:
            async with asyncio.timeout(self._send_within_s):
                if caller is None:
                    message, created = await self.backend.send(conversation, body)
                else:
                    call = Call(caller)
                    reply = await self.chat.request(call, RequestType.SEND, {**body, "conversation_id": conversation})
                    message, created = reply["message"], call.created
        except TimeoutError:
            # The send is queued or committing: it may yet be stored. A retry with the same
            # client_id stores it once, whichever it was.
            raise ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"no answer within {self._send_within_s:g} s: the message may yet be stored; "
                f"retry with client_id {str(body['client_id'])[:128]!r}",
                _RETRY_SOON,
            ) from None
        return _json(HTTPStatus.CREATED if created else HTTPStatus.OK, {"message": message})

    async def _history(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        conversation = _conversation(params)
        query = _query(request, _HISTORY_INTEGERS)
        if caller is None:
            found, has_more = await self.backend.history(conversation, query)
            return _json(HTTPStatus.OK, {"messages": [wire.message_object(m) for m in found], "has_more": has_more})
        payload = {**query, "conversation_id": conversation}
        reply = await self.chat.request(Call(caller), RequestType.HISTORY, payload)
        return _json(HTTPStatus.OK, {"messages": reply["messages"], "has_more": reply["has_more"]})

    # -- application events and users ---------------------------------------------------------

    async def _publish(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        return _json(HTTPStatus.OK, {"delivered_connections": self.backend.publish(json_body(request))})

    async def _broadcast(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        return _json(HTTPStatus.OK, {"delivered_connections": self.backend.broadcast(json_body(request))})

    async def _presence(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        return _json(HTTPStatus.OK, self.backend.presence(_user(params)))

    async def _online(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        return _json(HTTPStatus.OK, self.backend.online(_query(request, _PAGE_INTEGERS)))

    async def _disconnect(self, request: Request, params: dict[str, str], caller: Caller) -> Response:
        closed = self.backend.disconnect(_user(params), json_body(request))
        return _json(HTTPStatus.OK, {"closed_connections": closed})

"""Plain-HTTP routing: a table of method and path pattern to handler.

Layer: transport. Imports the standard library and the ws layer's HTTP types.

A pattern is a path whose `{name}` segments match one segment each and reach the handler as
`params`, percent-decoded (`/api/users/{user_id}/presence` with `b%C3%B6b` gives `böb`). Static
paths are looked up in a dict; patterns are tried in the order they were added. A path nobody
serves is a 404; a path served for other methods only is a 405 that says which in `Allow`. A
HEAD request is answered by the GET route (the response keeps its headers and loses its body).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote

from sohbet.ws.http11 import HEAD, NOT_FOUND, HeadCheck, Request, Response, error_body

__all__ = ["ANY_METHOD", "UNMATCHED", "RouteHandler", "Router"]

#: The method of a route that answers every method.
ANY_METHOD: Final = "*"
#: The route of a request no route matched (the label of its metrics).
UNMATCHED: Final = "unmatched"
_GET: Final = "GET"

RouteHandler = Callable[[Request, dict[str, str]], Response | Awaitable[Response]]

_PARAM: Final = re.compile(r"\{([a-z_]+)\}")
_STRAY_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPED_PARAM: Final = re.compile(r"\\\{([a-z_]+)\\\}")  # a `{name}` after re.escape


def _compile(pattern: str) -> re.Pattern[str]:
    """The regex of a pattern: each `{name}` matches one path segment, as group *name*."""
    return re.compile(_ESCAPED_PARAM.sub(r"(?P<\1>[^/]+)", re.escape(pattern)) + r"\Z")


class Router:
    """Routes of one port: `add` them at start-up, `dispatch` each request."""

    def __init__(self) -> None:
        self._static: dict[str, dict[str, RouteHandler]] = {}
        self._patterns: dict[str, tuple[re.Pattern[str], dict[str, RouteHandler]]] = {}
        #: Requests answered, by route pattern (`UNMATCHED` for a 404) and status: a bounded set
        #: of labels whatever paths the clients send.
        self.answered: dict[tuple[str, int], int] = {}
        #: How large a body each request may carry, asked from its head (see `http11.HeadCheck`);
        #: None: the server's `max_body_bytes` for everyone.
        self.body_limit: HeadCheck | None = None

    def add(self, method: str, pattern: str, handler: RouteHandler) -> None:
        """Serve *method* (or `ANY_METHOD`) on *pattern* with *handler*.

        Raises:
            ValueError: the same method and pattern were added before.
        """
        if _PARAM.search(pattern) is None:
            methods = self._static.setdefault(pattern, {})
        else:
            methods = self._patterns.setdefault(pattern, (_compile(pattern), {}))[1]
        if method in methods:
            raise ValueError(f"{method} {pattern} is routed twice")
        methods[method] = handler

    @property
    def routes(self) -> list[tuple[str, str]]:
        """Every (method, pattern) routed, in the order added (for the API's description)."""
        found = [(m, p) for p, methods in self._static.items() for m in methods]
        return found + [(m, p) for p, (_, methods) in self._patterns.items() for m in methods]

    def answer(self, request: Request) -> Response | Awaitable[Response]:
        """Answer *request* (see `dispatch`), counting the answer in `answered`."""
        route, response = self.dispatch(request)
        if isinstance(response, Response):
            self._count(route, response.status)
            return response
        return self._counted(route, response)

    async def _counted(self, route: str, pending: Awaitable[Response]) -> Response:
        response = await pending
        self._count(route, response.status)
        return response

    def _count(self, route: str, status: int) -> None:
        key = (route, status)
        self.answered[key] = self.answered.get(key, 0) + 1

    def dispatch(self, request: Request) -> tuple[str, Response | Awaitable[Response]]:
        """Answer *request* with the handler its method and path are routed to.

        Returns:
            The pattern of the route (`UNMATCHED` for a 404), and the handler's response.
        """
        route = request.path
        params: dict[str, str] = {}
        methods = self._static.get(route)
        if methods is None:
            for pattern, (regex, candidates) in self._patterns.items():
                match = regex.match(request.path)
                if match is not None:
                    route, methods, params = pattern, candidates, match.groupdict()
                    break
            else:
                return UNMATCHED, NOT_FOUND
        method = request.method
        handler = methods.get(method) or methods.get(ANY_METHOD)
        if handler is None and method == HEAD:
            handler = methods.get(_GET)
        if handler is None:
            allowed = sorted(methods)
            if _GET in methods:
                allowed = sorted([*allowed, HEAD])
            allow = ", ".join(allowed)
            body = error_body(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed here; use {allow}")
            return route, Response(HTTPStatus.METHOD_NOT_ALLOWED, body, headers=(("Allow", allow),))
        try:
            if any(_STRAY_PERCENT.search(value) for value in params.values()):
                raise ValueError("a % that starts no escape")  # `unquote` would keep it as it is
            decoded = {name: unquote(value, errors="strict") for name, value in params.items()}
        except ValueError:  # UnicodeDecodeError is one
            return route, Response(
                HTTPStatus.BAD_REQUEST,
                error_body(HTTPStatus.BAD_REQUEST, "the path is not percent-encoded UTF-8"),
            )
        return route, handler(request, decoded)

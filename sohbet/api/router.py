"""Plain-HTTP routing: a table of method and path pattern to handler.

Layer: transport. Imports the standard library and the ws layer's HTTP types.

A pattern is a path whose `{name}` segments match one segment each and reach the handler as
`params` (`/api/conversations/{id}/messages`). Static paths are looked up in a dict; patterns
are tried in the order they were added. A path nobody serves is a 404; a path served for other
methods only is a 405 that says which in `Allow`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Final

from sohbet.ws.http11 import NOT_FOUND, Request, Response, error_body

__all__ = ["ANY_METHOD", "RouteHandler", "Router"]

#: The method of a route that answers every method.
ANY_METHOD: Final = "*"

RouteHandler = Callable[[Request, dict[str, str]], Response | Awaitable[Response]]

_PARAM: Final = re.compile(r"\{([a-z_]+)\}")
_ESCAPED_PARAM: Final = re.compile(r"\\\{([a-z_]+)\\\}")  # a `{name}` after re.escape


def _compile(pattern: str) -> re.Pattern[str]:
    """The regex of a pattern: each `{name}` matches one path segment, as group *name*."""
    return re.compile(_ESCAPED_PARAM.sub(r"(?P<\1>[^/]+)", re.escape(pattern)) + r"\Z")


class Router:
    """Routes of one port: `add` them at start-up, `dispatch` each request."""

    def __init__(self) -> None:
        self._static: dict[str, dict[str, RouteHandler]] = {}
        self._patterns: dict[str, tuple[re.Pattern[str], dict[str, RouteHandler]]] = {}

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

    def dispatch(self, request: Request) -> Response | Awaitable[Response]:
        """Answer *request* with the handler its method and path are routed to."""
        params: dict[str, str] = {}
        methods = self._static.get(request.path)
        if methods is None:
            for regex, candidates in self._patterns.values():
                match = regex.match(request.path)
                if match is not None:
                    methods, params = candidates, match.groupdict()
                    break
            else:
                return NOT_FOUND
        handler = methods.get(request.method) or methods.get(ANY_METHOD)
        if handler is None:
            allow = ", ".join(sorted(methods))
            body = error_body(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use {allow}")
            return Response(HTTPStatus.METHOD_NOT_ALLOWED, body, headers=(("Allow", allow),))
        return handler(request, params)

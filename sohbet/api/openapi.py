"""The HTTP API's description: `openapi.json` (OpenAPI 3.1), shipped in this package and served at
`GET /api/openapi.json`, unauthenticated.

Layer: transport. Imports the standard library, orjson, the route table and the ws layer's HTTP
types; nothing of chat.

The document is written by hand, beside the endpoints it describes, and tests/api/test_openapi.py
holds it to the server: every route is in it and every operation in it is routed, and real
responses validate against its schemas. It is read and compacted once, when the route is added:
each request is answered with the same bytes.
"""

from __future__ import annotations

from http import HTTPStatus
from importlib.resources import files
from typing import Final

import orjson

from sohbet.api.router import Router
from sohbet.ws.http11 import Request, Response

__all__ = ["PATH", "document", "register"]

#: Where the document is served.
PATH: Final = "/api/openapi.json"
_FILE: Final = "openapi.json"


def document() -> bytes:
    """Read the shipped document, compacted (once per `register`: not per request).

    Raises:
        orjson.JSONDecodeError: the shipped file is not JSON (a broken build; the tests catch it).
    """
    return orjson.dumps(orjson.loads(files("sohbet.api").joinpath(_FILE).read_bytes()))


def register(router: Router) -> None:
    """Serve the document at `PATH` on *router*."""
    answer = Response(HTTPStatus.OK, document())

    def serve(request: Request, params: dict[str, str]) -> Response:
        return answer

    router.add("GET", PATH, serve)

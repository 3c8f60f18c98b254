"""Files shipped inside the package and served as they are: the browser client module at
`/client/sohbet.mjs` (always), and the demo page's files (`sohbet.app.demo`, with `--demo`).

Layer: entry. Reads package data (`sohbet/app/static/`) once, when a route is added, and answers
every request from memory: a strong ETag (a hash of the bytes), `Cache-Control`, and conditional
GET (`If-None-Match` answered 304 without a body, RFC 9110 §13.1.2). HEAD is the router's: the
GET answer's headers, no body.
"""

from __future__ import annotations

import hashlib
import re
from http import HTTPStatus
from importlib.resources import files
from typing import Final

from sohbet.api.router import Router
from sohbet.ws.http11 import Request, Response

__all__ = [
    "CACHE_CONTROL",
    "CLIENT_FILE",
    "CLIENT_PATH",
    "CSS",
    "HTML",
    "JAVASCRIPT",
    "StaticFile",
    "is_unchanged",
    "serve",
    "serve_client",
]

#: Where the browser client is served: `import {SohbetClient} from "/client/sohbet.mjs"`.
CLIENT_PATH: Final = "/client/sohbet.mjs"
#: The package file it is (`npm run build` in clients/js writes it).
CLIENT_FILE: Final = "sohbet.mjs"
#: The files change only when the server is upgraded. For five minutes a browser uses its copy
#: without asking (a page load and its imports cost no round trip); then it asks again with the
#: ETag, and a 304 costs no body. Five minutes, not a day: after an upgrade every page is on the
#: new client (which must match the new server) within minutes, without a versioned URL.
CACHE_CONTROL: Final = "public, max-age=300"
JAVASCRIPT: Final = "text/javascript; charset=utf-8"  # RFC 9239 §6
HTML: Final = "text/html; charset=utf-8"
CSS: Final = "text/css; charset=utf-8"
_STATIC: Final = "static"
#: A module script from another origin is fetched in CORS mode (HTML, "fetch a module script"):
#: an application served elsewhere imports the client only if the server allows it. The file is
#: public and carries no credential, so any origin may.
ANY_ORIGIN: Final = (("Access-Control-Allow-Origin", "*"),)
#: The opaque part of each entity-tag in an `If-None-Match` list (RFC 9110 §8.8.3), weak (`W/`)
#: or not. Found, not split on commas: a comma may stand inside the quotes.
_OPAQUE_TAG: Final = re.compile(r'"[^"]*"')
_ANY: Final = "*"


def is_unchanged(if_none_match: str | None, etag: str) -> bool:
    """Whether a GET with this `If-None-Match` is answered 304 for the representation *etag*.

    RFC 9110 §13.1.2: `*` matches any current representation; otherwise any tag of the list that
    matches *etag* by weak comparison (§8.8.3.2: `W/` ignored, the quoted parts equal). Without
    the header, or with one that names no tag, the full answer goes out.
    """
    if if_none_match is None:
        return False
    if if_none_match.strip() == _ANY:
        return True
    opaque = etag.removeprefix("W/")
    # The scan only when the tag is there at all: a client's 16 KB of quotes costs a search.
    return opaque in if_none_match and opaque in _OPAQUE_TAG.findall(if_none_match)


class StaticFile:
    """One file served from memory: its bytes, content type and strong ETag, and its answers."""

    __slots__ = ("_full", "_unchanged", "body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.body = body
        self.content_type = content_type
        # Strong: these bytes, and only they, carry this tag (128 bits of BLAKE2b), whichever
        # server process answers, so a restart or a second instance revalidates the same copy.
        self.etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
        headers = (("ETag", self.etag), ("Cache-Control", CACHE_CONTROL), *headers)
        self._full = Response(HTTPStatus.OK, body, content_type, headers)
        # A 304 carries the headers the 200 would (RFC 9110 §15.4.5: ETag, Cache-Control) and no
        # body; `http11.http_response` then writes neither Content-Type nor Content-Length.
        self._unchanged = Response(HTTPStatus.NOT_MODIFIED, b"", content_type, headers)

    @classmethod
    def shipped(cls, name: str, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> StaticFile:
        """Read the package file `sohbet/app/static/<name>`.

        Raises:
            OSError: the file is not there (a broken build: the server does not start).
        """
        return cls(files("sohbet.app").joinpath(_STATIC, name).read_bytes(), content_type, headers)

    def answer(self, request: Request, params: dict[str, str]) -> Response:
        """The route handler: 304 when the client's copy is current, else the file."""
        return self._unchanged if is_unchanged(request.header("if-none-match"), self.etag) else self._full


def serve(router: Router, path: str, file: StaticFile) -> None:
    """Serve *file* at `GET` (and so `HEAD`) *path* on *router*."""
    router.add("GET", path, file.answer)


def serve_client(router: Router) -> None:
    """Serve the browser client module at `CLIENT_PATH`, read from the package now."""
    serve(router, CLIENT_PATH, StaticFile.shipped(CLIENT_FILE, JAVASCRIPT, ANY_ORIGIN))

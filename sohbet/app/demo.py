"""The demo chat page (`--demo`): the page at `/`, its script and style under `/demo/`, and
`POST /demo/token`, which signs a token for whatever user name it is sent.

Layer: entry. The files are served by `sohbet.app.assets`; the token is `sohbet.auth.issue_token`,
as `sohbet-server token` makes it, with the server's own HS* secret (`Config` refuses `--demo`
on a server that holds only keys to verify).

That endpoint is why the demo is never for production: anyone who reaches the server becomes
any user, with no credential at all; the server says so in a warning at start
(`config.DEMO_WARNING`). Everything else about the requests is as on every route: the body limit
of a request without the API key (one WebSocket message), `application/json` bodies (415, 400).
Without `--demo` none of these routes exists: `/` answers 404 to a plain GET, as before, and
upgrades on `/` never reach the routes either way.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import Final

import orjson

from sohbet.api.endpoints import ApiError, json_body
from sohbet.api.router import Router
from sohbet.app.assets import CSS, HTML, JAVASCRIPT, StaticFile, serve
from sohbet.auth import issue_token
from sohbet.chat.ids import MAX_USER_ID_CHARS, is_user_id
from sohbet.config import AuthConfig
from sohbet.ws.http11 import Request, Response, error_body

__all__ = ["PAGE_PATH", "TOKEN_PATH", "TOKEN_TTL_S", "register"]

#: Where the page is: the WebSocket's own path, whose upgrades the server takes before any route.
PAGE_PATH: Final = "/"
TOKEN_PATH: Final = "/demo/token"
#: Seconds a demo token lives, as `sohbet-server token`'s by default; the client asks for a new
#: one when the server closes a connection with 4001 (token expired).
TOKEN_TTL_S: Final = 3600
#: (path, package file, content type) of the page's files.
_FILES: Final = (
    (PAGE_PATH, "demo.html", HTML),
    ("/demo/demo.mjs", "demo.mjs", JAVASCRIPT),
    ("/demo/demo.css", "demo.css", CSS),
)
#: A credential is kept by no cache on the way (as for OAuth's token answers, RFC 6749 §5.1).
_NOT_STORED: Final = (("Cache-Control", "no-store"),)
_BAD_USER: Final = f"user_id must be a string of 1-{MAX_USER_ID_CHARS} characters, without U+0000"


def register(router: Router, auth: AuthConfig) -> None:
    """Add the demo's routes to *router*, its files read from the package now; tokens are
    signed with *auth*'s secret."""
    for path, name, content_type in _FILES:
        serve(router, path, StaticFile.shipped(name, content_type))

    def mint(request: Request, params: dict[str, str]) -> Response:
        try:
            body = json_body(request)
        except ApiError as exc:
            return Response(exc.status, error_body(exc.status, str(exc)), headers=exc.headers)
        user = body.get("user_id")
        if not isinstance(user, str) or not is_user_id(user):
            return Response(HTTPStatus.BAD_REQUEST, error_body(HTTPStatus.BAD_REQUEST, _BAD_USER))
        token = issue_token(auth, user, TOKEN_TTL_S, time.time())
        answer = {"token": token, "user_id": user, "expires_in": TOKEN_TTL_S}
        return Response(HTTPStatus.OK, orjson.dumps(answer), headers=_NOT_STORED)

    router.add("POST", TOKEN_PATH, mint)

"""`--demo`: the page at `/` and its files, and `POST /demo/token`, which mints a token any
WebSocket then accepts as that user; the WebSocket on `/` stays what it was. Real server, real
sockets; the process-level half (the warning, the refusal without a secret) is in
tests/integration/test_processes.py.
"""

from __future__ import annotations

import asyncio
import re
from html.parser import HTMLParser
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import jwt
import orjson
import pytest
import websockets
from websockets.typing import Subprotocol

from sohbet.app.assets import StaticFile

from ..chatkit import SECRET, WsChat
from .test_assets import served

STATIC = files("sohbet.app").joinpath("static")
#: The demo's files: (path, package file, content type).
FILES = [
    ("/", "demo.html", "text/html; charset=utf-8"),
    ("/demo/demo.mjs", "demo.mjs", "text/javascript; charset=utf-8"),
    ("/demo/demo.css", "demo.css", "text/css; charset=utf-8"),
]
#: The specifier of each static or dynamic import of a module.
IMPORT = re.compile(r"""(?:from|import)\s*\(?\s*["']([^"']+)["']""")
BAD_USER = "user_id must be a string of 1-128 characters, without U+0000"


class Links(HTMLParser):
    """The URLs a page loads: stylesheets and scripts (with their type)."""

    def __init__(self) -> None:
        super().__init__()
        self.styles: list[str] = []
        self.scripts: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "link" and found.get("rel") == "stylesheet" and found.get("href"):
            self.styles.append(str(found["href"]))
        if tag == "script" and found.get("src"):
            self.scripts.append((str(found["src"]), found.get("type")))


def test_the_page_and_its_files_are_served_with_their_types_and_etags(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path, demo=True) as (_, http):
            for path, name, content_type in FILES:
                shipped = STATIC.joinpath(name).read_bytes()
                async with http.get(path) as r:
                    assert (r.status, await r.read()) == (200, shipped), path
                    assert r.headers["Content-Type"] == content_type
                    assert r.headers["ETag"] == StaticFile(shipped, "").etag
                    assert r.headers["Cache-Control"] == "public, max-age=300"
                async with http.get(path, headers={"If-None-Match": r.headers["ETag"]}) as again:
                    assert (again.status, await again.read()) == (304, b""), path
                async with http.head(path) as head:
                    assert head.status == 200 and head.headers["Content-Length"] == str(len(shipped))
            # The page loads its style and its script as a module, and each is served; so is
            # every module the script imports by absolute path (the client, at least).
            links = Links()
            links.feed(STATIC.joinpath("demo.html").read_text())
            assert "/demo/demo.css" in links.styles
            assert ("/demo/demo.mjs", "module") in links.scripts
            specifiers = IMPORT.findall(STATIC.joinpath("demo.mjs").read_text())
            imported = [urljoin("/demo/demo.mjs", spec) for spec in specifiers]
            assert "/client/sohbet.mjs" in imported
            for url in [*links.styles, *(src for src, _ in links.scripts), *imported]:
                async with http.get(url) as r:
                    assert r.status == 200, url

    asyncio.run(main())


def test_a_minted_token_opens_a_websocket_on_the_page_path_as_that_user(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path, demo=True) as (port, http):
            for name in ["alice", "Zeynep Öztürk", "x" * 128]:
                async with http.post("/demo/token", json={"user_id": name}) as r:
                    assert r.status == 200
                    assert r.headers["Cache-Control"] == "no-store"
                    answer = await r.json()
                assert answer["user_id"] == name and answer["expires_in"] == 3600
                claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
                assert claims["sub"] == name and claims["exp"] - claims["iat"] == 3600
                # `/` still upgrades with the page on it: the token as the client sends it.
                protocols = [Subprotocol("sohbet.v1"), Subprotocol(f"bearer.{answer['token']}")]
                async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=protocols) as ws:
                    hello = await WsChat(ws, name).expect("hello")
                    assert hello["payload"]["user_id"] == name
            # Only GET (and HEAD) of `/` is the page: other methods are refused, not served it.
            async with http.post("/", data=b"") as r:
                assert (r.status, r.headers["Allow"]) == (405, "GET, HEAD")

    asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        ({"user_id": ""}, None, 400, BAD_USER),
        ({"user_id": "x" * 129}, None, 400, BAD_USER),
        ({"user_id": "a\x00b"}, None, 400, BAD_USER),
        ({"user_id": 42}, None, 400, BAD_USER),
        ({"user_id": None}, None, 400, BAD_USER),
        ({"name": "alice"}, None, 400, BAD_USER),
        (b"", None, 400, BAD_USER),  # an empty body is an empty object
        (b'["alice"]', "application/json", 400, "the body must be a JSON object"),
        (b'{"user_id": "alice"', "application/json", 400, "the body is not valid JSON"),
        (b'{"user_id": "alice"}', "text/plain", 415, "the body must be application/json (UTF-8)"),
        ({"user_id": "alice", "pad": "x" * 70_000}, None, 413, "request body of"),
    ],
    ids=["empty", "too-long", "nul", "number", "null", "missing", "no-body", "array", "not-json", "text", "too-large"],
)
def test_a_bad_request_for_a_token_is_refused_as_the_api_refuses(
    tmp_path: Path, body: Any, content_type: str | None, status: int, message: str
) -> None:
    async def main() -> None:
        async with served(tmp_path, demo=True) as (_, http):
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            headers = {"Content-Type": content_type or "application/json"}
            async with http.post("/demo/token", data=data, headers=headers) as r:
                assert r.status == status
                error = (await r.json())["error"]
            assert error["message"].startswith(message), error
            assert error["code"] == ("too_large" if status == 413 else "bad_request")
            assert "token" not in error

    asyncio.run(main())


def test_the_served_page_is_not_the_websocket(tmp_path: Path) -> None:
    """An upgrade on `/` without a token is the WebSocket's 401, never the page."""

    async def main() -> None:
        async with served(tmp_path, demo=True) as (port, _):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=[Subprotocol("sohbet.v1")]):
                    pass
            assert refused.value.response.status_code == 401

    asyncio.run(main())

"""The browser client module, served by every server from the package file: its type, its strong
ETag and caching, and conditional GET (RFC 9110 §13.1.2), over real sockets to a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

import aiohttp
import pytest

from sohbet.app.assets import StaticFile, is_unchanged

from ..chatkit import chat_server
from ..integration.test_http_hardening import parse, read_to_eof

#: The package file, as installed: what the server must send, byte for byte.
SHIPPED = files("sohbet.app").joinpath("static", "sohbet.mjs").read_bytes()
CLIENT = "/client/sohbet.mjs"
NOT_FOUND = b'{"error":{"code":"not_found","message":"no such endpoint"}}'


@asynccontextmanager
async def served(tmp_path: Path, *, demo: bool = False) -> AsyncIterator[tuple[int, aiohttp.ClientSession]]:
    async with (
        chat_server(f"sqlite:///{tmp_path}/db.sqlite", demo=demo) as h,
        aiohttp.ClientSession(f"http://127.0.0.1:{h.server.port}") as session,
    ):
        yield h.server.port, session


def test_the_client_module_is_the_package_file_as_javascript_with_a_strong_etag(tmp_path: Path) -> None:
    async def main() -> list[str]:
        etags = []
        for n in range(2):  # two servers, one after the other: a restart keeps the tag
            async with served(tmp_path / str(n)) as (_, http), http.get(CLIENT) as r:
                assert r.status == 200
                assert await r.read() == SHIPPED
                assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
                assert r.headers["Cache-Control"] == "public, max-age=300"
                # An application on another origin may import it (a module script is fetched
                # in CORS mode).
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                etags.append(r.headers["ETag"])
        return etags

    first, second = asyncio.run(main())
    assert first == second == StaticFile(SHIPPED, "").etag
    assert first.startswith('"') and first.endswith('"') and len(first) > 20  # strong: no W/


def test_the_etag_is_the_bytes(tmp_path: Path) -> None:
    assert StaticFile(b"export {}", "a").etag == StaticFile(b"export {}", "b").etag
    assert StaticFile(b"export {}", "a").etag != StaticFile(b"export {};", "a").etag
    assert StaticFile(SHIPPED, "").etag != StaticFile(SHIPPED + b"\n", "").etag


TAG = '"0123456789abcdef"'


@pytest.mark.parametrize(
    ("if_none_match", "unchanged"),
    [
        (None, False),
        ("", False),
        (TAG, True),
        (f"W/{TAG}", True),  # weak comparison: W/ does not matter
        ('"0123456789abcdeF"', False),
        ('"0123456789abcde"', False),
        ("0123456789abcdef", False),  # not an entity-tag: no quotes
        ("*", True),
        (" * ", True),
        (f'"other", {TAG}', True),
        (f'W/"other",W/{TAG}', True),
        ('"other", "another"', False),
        (f'"a,{TAG[1:-1]}", "b"', False),  # the comma is inside the first tag
        (f'"a,b", {TAG}', True),
        ('"other", *', False),  # `*` is a value of its own, not a member of a list
    ],
    ids=[
        "absent", "empty", "same", "weak-same", "case", "prefix", "unquoted", "star", "star-spaces", "in-list",
        "weak-in-list", "not-in-list", "comma-inside-a-tag", "after-a-comma-tag", "star-in-list",
    ],
)  # fmt: skip
def test_if_none_match_compares_weakly_against_a_list(if_none_match: str | None, unchanged: bool) -> None:
    assert is_unchanged(if_none_match, TAG) is unchanged


def test_a_current_copy_is_answered_304_without_a_body(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as (_, http):
            async with http.get(CLIENT) as r:
                etag = r.headers["ETag"]
            cases = [
                ({"If-None-Match": etag}, 304),
                ({"If-None-Match": f"W/{etag}"}, 304),
                ({"If-None-Match": '"not-this-one"'}, 200),
                ({"If-None-Match": "*"}, 304),
                ({"If-None-Match": f'"older", {etag}'}, 304),
                ({"If-None-Match": '"older", "oldest"'}, 200),
            ]
            for headers, status in cases:
                async with http.get(CLIENT, headers=headers) as r:
                    body = await r.read()
                    assert r.status == status, headers
                    assert r.headers["ETag"] == etag and r.headers["Cache-Control"] == "public, max-age=300"
                    if status == 304:
                        assert body == b"" and "Content-Length" not in r.headers and "Content-Type" not in r.headers
                    else:
                        assert body == SHIPPED

    asyncio.run(main())


def test_head_and_304_put_no_body_on_the_wire(tmp_path: Path) -> None:
    """Pipelined on one connection: a body after a HEAD answer or a 304 would be read as the
    next answer's head."""

    async def main() -> None:
        async with served(tmp_path) as (port, _):
            etag = StaticFile(SHIPPED, "").etag
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"HEAD {CLIENT} HTTP/1.1\r\nHost: x\r\n\r\n"
                f"HEAD {CLIENT} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n"
                f"GET {CLIENT} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n"
                f"GET {CLIENT} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            answers = parse(await read_to_eof(reader), heads=2)
            writer.close()
            (head, head_headers, head_body), (head_304, _, _), (get_304, headers_304, body_304), last = answers
            assert (head, head_headers["content-length"], head_body) == (200, str(len(SHIPPED)), b"")
            assert head_headers["etag"] == etag
            assert (head_304, get_304, body_304) == (304, 304, b"")
            assert "content-length" not in headers_304
            assert (last[0], last[2]) == (200, SHIPPED)

    asyncio.run(main())


def test_without_demo_the_page_and_its_routes_are_not_there(tmp_path: Path) -> None:
    """As before the demo existed: a plain GET of `/` is the 404 of any unknown path."""

    async def main() -> None:
        async with served(tmp_path) as (_, http):
            for method, path in [
                ("GET", "/"),
                ("HEAD", "/"),
                ("GET", "/demo/demo.mjs"),
                ("GET", "/demo/demo.css"),
                ("POST", "/demo/token"),
            ]:
                async with http.request(method, path, json={"user_id": "alice"} if method == "POST" else None) as r:
                    assert r.status == 404, (method, path)
                    assert await r.read() == (b"" if method == "HEAD" else NOT_FOUND)

    asyncio.run(main())

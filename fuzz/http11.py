"""Fuzz target: the HTTP request reader (`sohbet.ws.http11`) and upgrade validation
(`sohbet.ws.handshake`), on arbitrary bytes in arbitrary chunks.

Property: `RequestReader.feed` returns requests or raises `InvalidHandshake` with 400, 413 or
431, nothing else; `validate_upgrade` accepts or raises `InvalidHandshake` with 400, 403 or 426;
every refusal builds its JSON error response and every acceptance its 101, as the server does.
An accepted upgrade answers the key it was sent, picks only what was offered and configured,
and negotiates an extension header that parses. Chunking changes nothing that works: when the
whole stream reads without error, every chunking of it reads the same requests, and an upgrade
leaves the same bytes after it.

Input: a configuration byte, the chunking (`Reader.chunking`), then the stream.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from _harness import Reader, chunks, instrumented, main

with instrumented(__name__):
    from sohbet.errors import InvalidHandshake
    from sohbet.ws import deflate, handshake, http11
    from sohbet.ws.config import CompressionConfig, Limits, WebSocketConfig
    from sohbet.ws.frames import accept_key

# The reader's refusals: 400, 413, 431, and (step 6) a transfer coding it does not read (501) or
# an expectation other than 100-continue (417).
_READER_STATUSES = frozenset(
    (
        HTTPStatus.BAD_REQUEST,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        431,
        HTTPStatus.NOT_IMPLEMENTED,
        HTTPStatus.EXPECTATION_FAILED,
    )
)
_UPGRADE_STATUSES = frozenset((HTTPStatus.BAD_REQUEST, HTTPStatus.FORBIDDEN, HTTPStatus.UPGRADE_REQUIRED))
# The defaults, and small limits, so a few kilobytes of input reach every one of them.
_LIMITS = (Limits(), Limits(max_line_bytes=256, max_header_bytes=512, max_headers=8, max_body_bytes=1024))
_ORIGIN = "https://chat.example"


def ws_config(flags: int) -> WebSocketConfig:
    """A handshake configuration from one byte: compression, origins, subprotocols."""
    return WebSocketConfig(
        allowed_origins=frozenset({_ORIGIN}) if flags & 2 else frozenset(),
        subprotocols=("sohbet.v1", "chat") if flags & 4 else (),
        compression=CompressionConfig(
            enabled=bool(flags & 8), window_bits=9 + (flags >> 4) % 7, server_no_context_takeover=bool(flags & 128)
        ),
    )


def _check_upgrade(request: http11.Request, config: WebSocketConfig) -> None:
    try:
        upgrade = handshake.validate_upgrade(request, config)
    except InvalidHandshake as exc:
        assert exc.http_status in _UPGRADE_STATUSES, (exc.http_status, str(exc))
        http11.error_response(exc.http_status, str(exc), exc.headers)
        return
    assert upgrade.accept == accept_key((request.header("sec-websocket-key") or "").strip())
    assert upgrade.subprotocol is None or (
        upgrade.subprotocol in config.subprotocols and upgrade.subprotocol in upgrade.offered_subprotocols
    )
    if upgrade.extensions is not None:
        assert config.compression.enabled and upgrade.deflate is not None
        parsed = deflate.parse_extensions(upgrade.extensions)
        assert parsed is not None and parsed[0][0] == "permessage-deflate", upgrade.extensions
    response = handshake.switching_protocols(upgrade)
    assert response.startswith(b"HTTP/1.1 101 ") and response.endswith(b"\r\n\r\n")


def read(limits: Limits, pieces: list[bytes], config: WebSocketConfig | None) -> tuple[Any, ...]:
    """Feed *pieces* as the HTTP phase does, stopping at an error or an upgrade; check each
    request's upgrade when *config* is given. Returns the requests, the refusal's status (or
    None) and the bytes after an upgrade (or None)."""
    reader = http11.RequestReader(limits)
    requests: list[http11.Request] = []
    for i, piece in enumerate(pieces):
        try:
            # As the HTTP phase does when nothing has been answered yet: the cap is per connection.
            got = reader.feed(piece, limits.max_pipelined_requests - len(requests))
        except InvalidHandshake as exc:
            assert exc.http_status in _READER_STATUSES, (exc.http_status, str(exc))
            http11.error_response(exc.http_status, str(exc), exc.headers)
            return requests, exc.http_status, None
        for request in got:
            assert all(name == name.lower() for name, _ in request.headers)
            assert request.path, request
            http11.http_response(200, request.body, close=not request.keep_alive)
            if config is not None and request.is_upgrade:
                _check_upgrade(request, config)
        requests += got
        if reader.upgraded:
            return requests, None, reader.rest + b"".join(pieces[i + 1 :])
    return requests, None, None


def TestOneInput(data: bytes) -> None:  # noqa: N802  # the name atheris and libFuzzer look for
    r = Reader(data)
    flags = r.byte()
    limits = _LIMITS[flags & 1]
    sizes = r.chunking()
    stream = r.rest()
    cut = read(limits, chunks(stream, sizes), ws_config(flags))
    whole = read(limits, [stream], None)
    if whole[1] is None:
        head_limit = limits.max_line_bytes + limits.max_header_bytes + 4
        if cut[1] == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE and _longest_stretch(stream) > head_limit:
            # Documented: an unfinished head is bounded by its raw bytes, a head that arrives in
            # one read by its parsed sizes (whitespace around values is not counted), so a head
            # longer than the raw bound may pass whole and be refused in pieces. Up to there, same.
            assert whole[0][: len(cut[0])] == cut[0], (cut, whole)
            return
        assert cut == whole, (cut, whole)


def _longest_stretch(stream: bytes) -> int:
    """The most bytes between two blank lines: what a request head can be at most."""
    return max(len(part) for part in stream.split(b"\r\n\r\n"))


if __name__ == "__main__":
    main(TestOneInput)

"""HTTP request reading and the opening handshake (RFC 6455 §4.2), in the order docs/protocol.md fixes."""

from __future__ import annotations

import orjson
import pytest

from sohbet.errors import InvalidHandshake
from sohbet.ws import handshake, http11
from sohbet.ws.config import MAX_PIPELINED_REQUESTS, CompressionConfig, Limits, WebSocketConfig

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3


def upgrade_request(*extra: str, drop: tuple[str, ...] = (), first_line: str = "GET /ws?x=1 HTTP/1.1") -> bytes:
    headers = {
        "host": "Host: example.com",
        "upgrade": "Upgrade: websocket",
        "connection": "Connection: Upgrade",
        "key": f"Sec-WebSocket-Key: {KEY}",
        "version": "Sec-WebSocket-Version: 13",
    }
    lines = [first_line, *(v for k, v in headers.items() if k not in drop), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_one(raw: bytes, limits: Limits | None = None) -> http11.Request:
    requests = http11.RequestReader(limits or Limits()).feed(raw)
    assert len(requests) == 1
    return requests[0]


# --- reading requests --------------------------------------------------------------------------


def test_reads_an_upgrade_request_and_keeps_the_bytes_after_it() -> None:
    reader = http11.RequestReader(Limits())
    [request] = reader.feed(upgrade_request() + b"\x81\x80\x00\x00\x00\x00")
    assert (request.method, request.path, request.query, request.version) == ("GET", "/ws", "x=1", "1.1")
    assert request.header("sec-websocket-key") == KEY
    assert request.is_upgrade
    assert reader.upgraded
    assert reader.rest == b"\x81\x80\x00\x00\x00\x00"


def test_reads_a_request_fed_one_byte_at_a_time() -> None:
    reader = http11.RequestReader(Limits())
    raw = upgrade_request()
    got = [r for i in range(len(raw)) for r in reader.feed(raw[i : i + 1])]
    assert [r.path for r in got] == ["/ws"]


def test_reads_pipelined_requests_with_bodies() -> None:
    raw = (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    first, second = http11.RequestReader(Limits()).feed(raw)
    assert (first.method, first.path, first.body, first.keep_alive) == ("POST", "/api/x", b"abc", True)
    assert (second.path, second.keep_alive) == ("/healthz", False)


def test_repeated_headers_are_joined_and_counted() -> None:
    request = read_one(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
    assert request.header("x-a") == "1, 2"
    assert request.count("x-a") == 2
    assert request.header("missing") is None
    assert request.tokens("missing") == []


@pytest.mark.parametrize(
    ("raw", "status", "match"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 431, "request line"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, "header line"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 500) for i in range(40)) + b"\r\n",
            431,
            "headers exceed",
        ),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(65)) + b"\r\n",
            431,
            "more than 64 headers",
        ),
        # Refused from Content-Length, before a byte of the body is read:
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", 413, "body of 1048577 bytes exceeds"),
        # A chunked body has no length: counted as it arrives.
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"10000\r\n" + b"x" * 0x10000 + b"\r\n" for _ in range(17)),
            413,
            "request body exceeds 1048576",
        ),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400, "malformed"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "malformed"),
    ],
    ids=[
        "long-request-line",
        "long-header",
        "headers-too-large",
        "too-many-headers",
        "content-length",
        "chunked",
        "obs-fold",
        "tls",
    ],
)
def test_request_limits_and_syntax(raw: bytes, status: int, match: str) -> None:
    with pytest.raises(InvalidHandshake, match=match) as info:
        http11.RequestReader(Limits()).feed(raw)
    assert info.value.http_status == status


def test_an_endless_header_is_refused_before_it_ends() -> None:
    reader = http11.RequestReader(Limits())
    reader.feed(b"GET / HTTP/1.1\r\nX-Endless: ")
    with pytest.raises(InvalidHandshake) as info:
        for _ in range(100):
            reader.feed(b"z" * 1024)  # no line end ever arrives
    assert info.value.http_status == 431


# --- validating the upgrade --------------------------------------------------------------------

CONFIG = WebSocketConfig()


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (upgrade_request(first_line="POST /ws HTTP/1.1", drop=()), "method POST"),
        (upgrade_request(first_line="GET /ws HTTP/1.0"), "HTTP/1.0"),
        (upgrade_request(drop=("host",)), "Host"),
        (upgrade_request("Host: twice.example"), "Host"),
        (upgrade_request(drop=("upgrade",)), "Upgrade header"),
        (upgrade_request("Upgrade: h2c", drop=("upgrade",)), "Upgrade header"),
        (upgrade_request("Connection: keep-alive", drop=("connection",)), "Connection header"),
        (upgrade_request(drop=("key",)), "Sec-WebSocket-Key"),
        (upgrade_request("Sec-WebSocket-Key: dG9vIHNob3J0", drop=("key",)), "Sec-WebSocket-Key"),
        (upgrade_request("Sec-WebSocket-Key: !!!notbase64!!!!!!!!!!!", drop=("key",)), "Sec-WebSocket-Key"),
        (upgrade_request(f"Sec-WebSocket-Key: {KEY}"), "Sec-WebSocket-Key"),
        (upgrade_request(drop=("version",)), "Sec-WebSocket-Version"),
    ],
    ids=[
        "post",
        "http-1.0",
        "no-host",
        "two-hosts",
        "no-upgrade",
        "upgrade-not-websocket",
        "connection-not-upgrade",
        "no-key",
        "short-key",
        "key-not-base64",
        "two-keys",
        "no-version",
    ],
)
def test_malformed_upgrades_get_400(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidHandshake, match=match) as info:
        handshake.validate_upgrade(read_one(raw), CONFIG)
    assert info.value.http_status == 400


def test_wrong_version_gets_426_naming_13() -> None:
    raw = upgrade_request("Sec-WebSocket-Version: 8", drop=("version",))
    with pytest.raises(InvalidHandshake) as info:
        handshake.validate_upgrade(read_one(raw), CONFIG)
    assert info.value.http_status == 426
    assert info.value.headers == (("Sec-WebSocket-Version", "13"),)


def test_checks_run_in_protocol_order() -> None:
    origins = WebSocketConfig(allowed_origins=frozenset({"https://app.example"}))
    # A bad key (400) wins over a bad version (426), which wins over a bad origin (403).
    both = upgrade_request("Sec-WebSocket-Version: 8", "Origin: https://evil.example", drop=("version", "key"))
    with pytest.raises(InvalidHandshake) as info:
        handshake.validate_upgrade(read_one(both), origins)
    assert info.value.http_status == 400
    version_and_origin = upgrade_request("Sec-WebSocket-Version: 8", "Origin: https://evil.example", drop=("version",))
    with pytest.raises(InvalidHandshake) as info:
        handshake.validate_upgrade(read_one(version_and_origin), origins)
    assert info.value.http_status == 426


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("Origin: https://app.example", True), ("Origin: https://evil.example", False), (None, False)],
    ids=["listed", "other", "missing"],
)
def test_origin_allow_list(origin: str | None, allowed: bool) -> None:
    config = WebSocketConfig(allowed_origins=frozenset({"https://app.example"}))
    request = read_one(upgrade_request(*([origin] if origin else [])))
    if allowed:
        assert handshake.validate_upgrade(request, config).accept == ACCEPT
    else:
        with pytest.raises(InvalidHandshake) as info:
            handshake.validate_upgrade(request, config)
        assert info.value.http_status == 403


def test_token_lists_are_case_insensitive() -> None:
    raw = upgrade_request("Upgrade: WebSocket", "Connection: keep-alive, UPGRADE", drop=("upgrade", "connection"))
    assert handshake.validate_upgrade(read_one(raw), CONFIG).accept == ACCEPT


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        ("Sec-WebSocket-Protocol: chat, sohbet.v1", "sohbet.v1"),
        ("Sec-WebSocket-Protocol: sohbet.v1, bearer.abc", "sohbet.v1"),
        ("Sec-WebSocket-Protocol: chat, superchat", None),
        ("Sec-WebSocket-Protocol: SOHBET.V1", None),
        (None, None),
    ],
    ids=["ours-second", "with-bearer", "only-others", "wrong-case", "none"],
)
def test_subprotocol_selection(offered: str | None, selected: str | None) -> None:
    config = WebSocketConfig(subprotocols=("sohbet.v1",))
    upgrade = handshake.validate_upgrade(read_one(upgrade_request(*([offered] if offered else []))), config)
    assert upgrade.subprotocol == selected
    response = handshake.switching_protocols(upgrade)
    assert (b"Sec-WebSocket-Protocol: sohbet.v1" in response) == (selected is not None)
    assert b"bearer" not in response


def test_switching_protocols_response() -> None:
    config = WebSocketConfig(compression=CompressionConfig(enabled=True))
    raw = upgrade_request("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    response = handshake.switching_protocols(handshake.validate_upgrade(read_one(raw), config))
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=12\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "bad_request"), (401, "unauthorized"), (403, "forbidden"), (426, "bad_request"), (503, "unavailable")],
)
def test_error_responses_are_json(status: int, code: str) -> None:
    raw = http11.error_response(status, "why", (("Sec-WebSocket-Version", "13"),))
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Content-Type: application/json" in head
    assert b"Connection: close" in head
    assert b"Sec-WebSocket-Version: 13" in head
    assert orjson.loads(body) == {"error": {"code": code, "message": "why"}}


def test_plain_responses() -> None:
    assert http11.http_response(204) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert http11.http_response(200, b"ok", content_type="text/plain") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    )


def test_a_head_response_describes_the_body_without_sending_it() -> None:
    assert http11.http_response(200, b"ok", content_type="text/plain", head=True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
    )


# --- the pipelining limit ----------------------------------------------------------------------

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_read_returns_at_most_the_room_and_stops_at_the_request_beyond_it() -> None:
    reader = http11.RequestReader(Limits())
    assert len(reader.feed(GET * 5, room=3)) == 3
    assert reader.full and reader.stopped and not reader.upgraded
    assert reader.feed(GET) == []  # stopped for good: nothing more is read


def test_requests_that_fit_the_room_exactly_do_not_stop_the_reader() -> None:
    reader = http11.RequestReader(Limits())
    assert len(reader.feed(GET * 3, room=3)) == 3
    assert not reader.stopped
    assert len(reader.feed(GET, room=3)) == 1


def test_the_first_byte_of_a_request_beyond_the_room_stops_the_reader() -> None:
    reader = http11.RequestReader(Limits())
    assert len(reader.feed(GET * 2 + b"G", room=2)) == 2
    assert reader.full


def test_the_default_room_is_the_pipelining_limit() -> None:
    assert len(http11.RequestReader(Limits()).feed(GET * 40)) == MAX_PIPELINED_REQUESTS
    assert len(http11.RequestReader(Limits(max_pipelined_requests=2)).feed(GET * 40)) == 2


def test_an_upgrade_stops_the_reader_too() -> None:
    reader = http11.RequestReader(Limits())
    [plain, upgrade] = reader.feed(GET + upgrade_request() + GET)
    assert (plain.is_upgrade, upgrade.is_upgrade) == (False, True)
    assert reader.stopped and reader.upgraded and not reader.full
    assert reader.rest == GET


def test_a_body_may_arrive_in_pieces() -> None:
    reader = http11.RequestReader(Limits())
    assert reader.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc") == []
    [request] = reader.feed(b"def")
    assert request.body == b"abcdef"


@pytest.mark.parametrize("cut", [0, 1, 2, 3], ids=["after-the-head", "in-the-blank-line-1", "-2", "-3"])
def test_a_body_after_its_head_does_not_count_toward_the_head_bound(cut: int) -> None:
    """The bound on an unfinished head (line + headers + 4 bytes) took a read of body for head
    bytes when the read came after the head, or when the head's blank line was split across
    two reads (fuzz/corpus/http11/crash-body-after-head, crash-blank-line-split)."""
    reader = http11.RequestReader(Limits())
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 30000\r\n\r\n"
    body = b"x" * 30_000  # more than the 24,580-byte head bound, within the 1 MiB body limit
    assert reader.feed(head[: len(head) - cut]) == []
    [request] = reader.feed(head[len(head) - cut :] + body)
    assert request.body == body


@pytest.mark.parametrize(
    "raw",
    [b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET http:// HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["connect", "bad-absolute-url"],
)
def test_malformed_targets_are_a_400_not_a_crash(raw: bytes) -> None:
    with pytest.raises(InvalidHandshake) as info:
        http11.RequestReader(Limits()).feed(raw)
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    "extra", ["Content-Length: 5", "Transfer-Encoding: chunked"], ids=["content-length", "chunked"]
)
def test_an_upgrade_with_a_body_is_refused(extra: str) -> None:
    request = http11.Request(
        "GET",
        "/ws",
        "",
        "1.1",
        (
            ("host", "x"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
            tuple(extra.lower().split(": ")),  # type: ignore[arg-type]
        ),
    )
    with pytest.raises(InvalidHandshake, match="no body") as info:
        handshake.validate_upgrade(request, CONFIG)
    assert info.value.http_status == 400


def test_the_reader_says_when_a_request_is_under_way() -> None:
    reader = http11.RequestReader(Limits())
    assert not reader.is_partial
    assert reader.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-") == [] and reader.is_partial
    assert reader.feed(b"Length: 2\r\n\r\nx") == [] and reader.is_partial  # in its body
    assert len(reader.feed(b"yGET / HTTP/1.1\r\nHost: a\r\n\r\n")) == 2 and not reader.is_partial


@pytest.mark.parametrize(
    ("coding", "status"),
    [("gzip, chunked", 501), ("chunked, chunked", 400), ("CHUNKED", 200)],
    ids=["gzip-then-chunked", "chunked-twice", "upper-case"],
)
def test_only_chunked_bodies_are_read(coding: str, status: int) -> None:
    raw = f"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\n\r\n3\r\nabc\r\n0\r\n\r\n".encode()
    if status == 200:
        assert http11.RequestReader(Limits()).feed(raw)[0].body == b"abc"
    else:
        with pytest.raises(InvalidHandshake) as info:  # 400 from httptools, 501 from us
            http11.RequestReader(Limits()).feed(raw)
        assert info.value.http_status == status


def test_expect_100_continue_is_asked_for_once_per_request() -> None:
    reader = http11.RequestReader(Limits())
    head = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"
    assert reader.feed(head) == [] and reader.take_continue()
    assert not reader.take_continue()  # once
    assert reader.feed(b"abc")[0].body == b"abc"
    whole = http11.RequestReader(Limits())
    assert len(whole.feed(head + b"abc")) == 1 and not whole.take_continue()  # the body came: no need
    with pytest.raises(InvalidHandshake, match="only Expect: 100-continue") as info:
        http11.RequestReader(Limits()).feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n")
    assert info.value.http_status == 417

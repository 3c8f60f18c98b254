"""The WebSocket opening handshake (RFC 6455 §4.2), sans-I/O: validate an upgrade, build the 101.

Layer: ws (sans-I/O). Imports the standard library and the ws modules; nothing of chat.

`validate_upgrade` checks an upgrade request (read by `sohbet.ws.http11`) in the order
docs/protocol.md fixes (400, 426, 403); the server adds 401 and 503 after it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from sohbet.errors import InvalidHandshake, shown
from sohbet.ws import deflate
from sohbet.ws.config import WebSocketConfig
from sohbet.ws.frames import accept_key
from sohbet.ws.http11 import Request

__all__ = ["WEBSOCKET_VERSION", "Upgrade", "switching_protocols", "validate_upgrade"]

#: The one `Sec-WebSocket-Version` this server speaks (RFC 6455 §4.1).
WEBSOCKET_VERSION: Final = "13"
_KEY_BYTES: Final = 16  # a Sec-WebSocket-Key is 16 random bytes, in base64 (§4.1)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An accepted opening handshake: what the 101 response says and the connection uses."""

    accept: str
    subprotocol: str | None
    offered_subprotocols: tuple[str, ...]
    deflate: deflate.DeflateParams | None
    extensions: str | None


def validate_upgrade(request: Request, config: WebSocketConfig) -> Upgrade:
    """Check an upgrade request (RFC 6455 §4.2.1) and negotiate what the response will say.

    Raises:
        InvalidHandshake: 400 (malformed), 426 (version other than 13), 403 (origin refused).
    """
    if request.method != "GET":
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, f"method {request.method} cannot upgrade; use GET")
    if request.version != "1.1":
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, f"HTTP/{request.version} cannot upgrade; use HTTP/1.1")
    if request.body or request.header("content-length") not in (None, "0") or request.header("transfer-encoding"):
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "an upgrade request has no body")
    if request.count("host") != 1:
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "missing or repeated Host header")
    if not request.is_upgrade:
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "Upgrade header does not name websocket")
    if "upgrade" not in request.tokens("connection"):
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "Connection header does not name upgrade")
    key = (request.header("sec-websocket-key") or "").strip()
    if request.count("sec-websocket-key") != 1 or not _is_valid_key(key):
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "Sec-WebSocket-Key must be one base64 value of 16 bytes")
    version = request.header("sec-websocket-version")
    if version is None:
        raise InvalidHandshake(HTTPStatus.BAD_REQUEST, "missing Sec-WebSocket-Version header")
    if version.strip() != WEBSOCKET_VERSION:
        raise InvalidHandshake(
            HTTPStatus.UPGRADE_REQUIRED,
            f"WebSocket version {shown(version.strip())} is not supported; use {WEBSOCKET_VERSION}",
            (("Sec-WebSocket-Version", WEBSOCKET_VERSION),),
        )
    if config.allowed_origins and request.header("origin") not in config.allowed_origins:
        raise InvalidHandshake(HTTPStatus.FORBIDDEN, f"origin {shown(request.header('origin'))} is not allowed")
    offered = tuple(t.strip() for t in (request.header("sec-websocket-protocol") or "").split(",") if t.strip())
    subprotocol = next((p for p in config.subprotocols if p in offered), None)
    negotiated = deflate.negotiate(request.header("sec-websocket-extensions"), config.compression)
    return Upgrade(
        accept=accept_key(key),
        subprotocol=subprotocol,
        offered_subprotocols=offered,
        deflate=negotiated[0] if negotiated else None,
        extensions=negotiated[1] if negotiated else None,
    )


def _is_valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == _KEY_BYTES
    except (binascii.Error, UnicodeEncodeError):
        return False


def switching_protocols(upgrade: Upgrade) -> bytes:
    """Build the 101 response."""
    chosen = upgrade.subprotocol
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {upgrade.accept}",
    ]
    if chosen:
        lines.append(f"Sec-WebSocket-Protocol: {chosen}")
    if upgrade.extensions:
        lines.append(f"Sec-WebSocket-Extensions: {upgrade.extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

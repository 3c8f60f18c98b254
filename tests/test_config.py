"""Configuration is validated when it is built, so a bad setting stops the process at startup."""

from __future__ import annotations

import pytest

from sohbet.config import CompressionConfig, Limits, WebSocketConfig
from sohbet.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_message_bytes": 100}, "max_message_bytes of 100 is below 125"),
        ({"max_fragments": -1}, "max_fragments of -1 is negative"),
        ({"max_connections": -5}, "max_connections of -5 is negative"),
        ({"handshake_timeout_s": 0}, "handshake_timeout_s of 0 is not positive"),
        ({"ping_interval_s": -1}, "ping_interval_s of -1 is negative"),
        ({"max_line_bytes": 100}, "max_line_bytes of 100 is below 256"),
        ({"max_header_bytes": 1000}, "max_header_bytes of 1000 is below max_line_bytes of 8192"),
        ({"max_headers": 2}, "max_headers of 2 is below 8"),
        ({"max_body_bytes": -1}, "max_body_bytes of -1 is negative"),
        ({"buffer_high_water_bytes": 2 << 20}, "at most max_buffered_bytes"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_limits_refuse_nonsense(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Limits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_bits": 8}, "window_bits of 8 is outside 9-15"),
        ({"level": 0}, "level of 0 is outside 1-9"),
        ({"mem_level": 10}, "mem_level of 10 is outside 1-9"),
    ],
)
def test_compression_refuses_nonsense(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CompressionConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_the_protocols() -> None:
    limits = Limits()
    assert (limits.max_message_bytes, limits.max_fragments, limits.message_timeout_s) == (65536, 64, 30.0)
    assert (limits.max_line_bytes, limits.max_header_bytes, limits.max_headers) == (8192, 16384, 64)
    assert (limits.ping_interval_s, limits.pong_timeout_s, limits.max_frames_per_10s) == (20.0, 20.0, 120)
    assert (limits.max_buffered_bytes, limits.buffer_high_water_bytes, limits.slow_consumer_s) == (1 << 20, 65536, 10.0)
    assert not CompressionConfig().enabled
    assert CompressionConfig().window_bits == 12
    assert WebSocketConfig().paths == frozenset({"/", "/ws"})

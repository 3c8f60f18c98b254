"""The public API of `import sohbet`: every name it promises, loaded on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sohbet
from sohbet.client import ChatClient
from sohbet.ws import frames, server


def test_every_exported_name_resolves_to_its_definition() -> None:
    for name in sohbet.__all__:
        assert getattr(sohbet, name) is not None, name
    assert sohbet.serve is server.serve
    assert sohbet.WebSocket is server.WebSocket
    assert sohbet.ChatClient is ChatClient
    assert sohbet.FrameParser is frames.FrameParser
    assert sohbet.CloseCode.TOKEN_EXPIRED == 4001
    assert set(sohbet.__all__) <= set(dir(sohbet))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = sohbet.nope  # type: ignore[attr-defined]  # the point of the test


def test_importing_the_frame_core_does_not_load_the_server() -> None:
    code = "import sys, sohbet.ws.frames; print('asyncio' in sys.modules, 'sohbet.client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.split() == ["False", "False"]

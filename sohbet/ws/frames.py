"""The frame core, compiled or pure Python, and the wire constants of RFC 6455.

Layer: ws. Imports only the standard library and `sohbet.ws._frames*`, `sohbet.ws.codes`.

The compiled module is the one that runs. `SOHBET_NO_EXTENSIONS=1` selects the pure-Python twin
for debugging and differential tests; this is the one place the core reads the environment,
because the choice has to be made before anything imports a frame function.
"""

from __future__ import annotations

import importlib.machinery
import os
from typing import Final

from sohbet.ws.codes import MAX_CONTROL_PAYLOAD, CloseCode, Opcode

if os.environ.get("SOHBET_NO_EXTENSIONS") == "1":
    from sohbet.ws import _frames_py as _impl
else:
    try:
        from sohbet.ws import _frames as _impl  # type: ignore[no-redef]  # same API, see _frames.pyi
    except ImportError as exc:  # pragma: no cover  # runs in a child process (tests/test_api.py)
        here = os.path.dirname(__file__)
        if any(os.path.exists(os.path.join(here, "_frames" + s)) for s in importlib.machinery.EXTENSION_SUFFIXES):
            raise  # built, but it failed to load: Python's own message says why
        # Most often a source checkout shadowing the installed package: `python -m sohbet...` run
        # from the repository root puts it first on sys.path, and it has no compiled core. Say so,
        # instead of Python's "cannot import name" (before: "most likely a circular import").
        raise ImportError(
            f"sohbet's compiled frame core (sohbet.ws._frames) is not built in {here}: {exc}. "
            "If that is a source checkout (Python was started in the repository root, whose sohbet/ hides the "
            "installed package), run from another directory or with `python -P`; to work in the checkout, build "
            "the core in place with `pip install -e .`. SOHBET_NO_EXTENSIONS=1 runs the slow pure-Python twin."
        ) from exc

__all__ = [
    "IMPLEMENTATION",
    "MAX_CONTROL_PAYLOAD",
    "CloseCode",
    "Frame",
    "FrameParser",
    "Opcode",
    "Utf8Validator",
    "accept_key",
    "apply_mask",
    "build_close",
    "build_frame",
    "is_valid_close_code",
    "is_valid_utf8",
    "parse_close",
]

#: "cython" or "python": which implementation of the frame core this process runs.
IMPLEMENTATION: Final = "python" if _impl.__name__.endswith("_py") else "cython"

Frame = _impl.Frame
FrameParser = _impl.FrameParser
Utf8Validator = _impl.Utf8Validator
accept_key = _impl.accept_key
apply_mask = _impl.apply_mask
build_close = _impl.build_close
build_frame = _impl.build_frame
is_valid_close_code = _impl.is_valid_close_code
parse_close = _impl.parse_close
is_valid_utf8 = _impl.is_valid_utf8

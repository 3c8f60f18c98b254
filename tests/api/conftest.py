"""The HTTP API's tests run real sockets like the integration tests: the same event-loop fixture."""

from __future__ import annotations

from ..integration.conftest import run

__all__ = ["run"]

from collections.abc import Iterable
from typing import Any, Final

from sohbet.ws._send_py import SocketCore as SocketCore  # the same attributes and methods as the twin's

PHASE_WS: Final[int]

def write_now(fd: int, transport: Any, data: bytes, drained: bool = False) -> int: ...
def broadcast(connections: Iterable[Any], frame: bytes, text: bytes | str, skip: Any) -> tuple[int, int]: ...

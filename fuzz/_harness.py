"""What every fuzz target shares: instrumented imports, the atheris entry point, and a reader that
turns the fuzzer's bytes into choices.

A target is `fuzz/<name>.py` with a `TestOneInput(data: bytes)` that asserts a property. Run as a
script it fuzzes under atheris; imported (by `tests/test_fuzz_corpus.py`) it is a plain function,
so the corpus replays without atheris installed. The choices come from `Reader`, not atheris's
`FuzzedDataProvider`, because the replay must decode a corpus file exactly as the fuzzer did and
the provider exists only where atheris is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def instrumented(module_name: str) -> Iterator[None]:
    """Instrument the modules imported in the block for coverage, when *module_name* (the
    target's `__name__`) is the script being fuzzed; a no-op when the target is only imported."""
    if module_name != "__main__" or importlib.util.find_spec("atheris") is None:
        yield
        return
    import atheris  # noqa: PLC0415  # only the fuzzing process has it

    with atheris.instrument_imports(include=["sohbet"]):
        yield


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Fuzz *test_one_input* with libFuzzer's command line (corpus dirs, -max_total_time, ...)."""
    import atheris  # noqa: PLC0415  # only the fuzzing process has it

    # libFuzzer's -merge (and -fork) run argv[0] again through the shell: a script path alone
    # is not a command, so make it "python /path/to/target.py".
    argv = [f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(sys.argv[0]))}", *sys.argv[1:]]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


class Reader:
    """Consume an input from the front: small choices first, then the bytes that remain.

    Past the end every choice reads as zero, so any input, even empty, decodes to something:
    the fuzzer never wastes a run on an input that "does not parse".
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        """The next byte, 0-255."""
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def uint(self, nbytes: int) -> int:
        """The next *nbytes* bytes as a big-endian unsigned integer."""
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "big")

    def flag(self) -> bool:
        """A yes/no choice (one byte: its low bit)."""
        return bool(self.byte() & 1)

    def pick(self, options: Sequence[T]) -> T:
        """One of *options*, by the next byte."""
        return options[self.byte() % len(options)]

    def take(self, n: int) -> bytes:
        """Up to *n* of the next bytes."""
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def rest(self) -> bytes:
        """Every byte not consumed yet."""
        out = self._data[self._pos :]
        self._pos = len(self._data)
        return out

    @property
    def remaining(self) -> int:
        """How many bytes are left."""
        return len(self._data) - self._pos

    def chunking(self) -> list[int]:
        """Chunk sizes for a byte stream: a count byte (0-7 sizes), then one byte per size.

        A size of 0 means "everything left"; no sizes at all means one chunk. The sizes repeat,
        so `[1]` feeds the stream a byte at a time.
        """
        return [self.byte() for _ in range(self.byte() % 8)]


def chunks(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut *data* into pieces of *sizes*, repeated (see `Reader.chunking`); never an empty piece,
    except one for empty *data* (a read of nothing is what a transport may also deliver)."""
    if not sizes or not data:
        return [data]
    out: list[bytes] = []
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)] or len(data) - i
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


def encode_chunking(sizes: Sequence[int]) -> bytes:
    """The bytes `Reader.chunking` decodes to *sizes*: how seeds say how they are cut."""
    assert len(sizes) < 8 and all(0 <= s < 256 for s in sizes)  # noqa: PLR2004  # the format's bounds
    return bytes([len(sizes), *sizes])

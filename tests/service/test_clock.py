"""`LoopClock` reads the running loop's clock, whether it was made inside a loop or outside one."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from sohbet.service import LoopClock


@pytest.mark.parametrize("made", ["in the loop", "outside any loop"])
def test_a_clock_reads_the_loop_running(made: str) -> None:
    outside = LoopClock() if made == "outside any loop" else None

    async def main() -> tuple[float, float, float]:
        clock = outside or LoopClock()
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(0.02)
        return before, clock.now(), loop.time()

    for run in (asyncio.run, uvloop.run):
        before, now, after = run(main())
        assert before + 0.015 <= now <= after

"""`LoopClock` reads the running loop's clock, whether it was made inside a loop or outside one."""

from __future__ import annotations

import asyncio

import uvloop

from sohbet.service import LoopClock


def test_a_clock_made_in_a_loop_reads_that_loop() -> None:
    async def main() -> tuple[float, float, float]:
        clock = LoopClock()
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(0.02)
        return before, clock.now(), loop.time()

    for run in (asyncio.run, uvloop.run):
        before, now, after = run(main())
        assert before + 0.015 <= now <= after


def test_a_clock_made_outside_a_loop_reads_the_one_running() -> None:
    clock = LoopClock()

    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(0.02)
        return before, clock.now(), loop.time()

    for run in (asyncio.run, uvloop.run):
        before, now, after = run(main())
        assert before + 0.015 <= now <= after

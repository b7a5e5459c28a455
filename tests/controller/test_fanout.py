"""The one fan-out: order, bound, callback, and nothing left running on the way out."""

from __future__ import annotations

import asyncio

import pytest

from shoal.controller.fanout import fan_out, per_gateway
from shoal.controller.targets import Target


async def test_results_in_item_order_callbacks_as_they_finish() -> None:
    finished: list[int] = []

    async def work(n: int) -> int:
        await asyncio.sleep(0.01 * (5 - n))
        return n * 10

    assert await fan_out([1, 2, 3, 4], work, limit=4, on_done=finished.append) == [10, 20, 30, 40]
    assert finished == [40, 30, 20, 10]


class Peak:
    """Work that notes how many copies of itself run at once."""

    def __init__(self) -> None:
        self.running = self.peak = 0

    async def work(self, n: int) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        return n


async def test_at_most_limit_run_at_once() -> None:
    peak = Peak()
    assert await fan_out(range(20), peak.work, limit=3) == list(range(20))
    assert peak.peak == 3


async def test_a_shared_semaphore_bounds_across_calls() -> None:
    gate, peak = asyncio.Semaphore(2), Peak()
    await asyncio.gather(fan_out(range(5), peak.work, limit=gate), fan_out(range(5), peak.work, limit=gate))
    assert peak.peak == 2


async def test_one_raising_cancels_and_awaits_the_others() -> None:
    cleaned: list[int] = []

    async def work(n: int) -> None:
        try:
            if n == 0:
                await asyncio.sleep(0.01)
                raise ValueError("local file unreadable")
            await asyncio.sleep(10)
        finally:
            cleaned.append(n)

    with pytest.raises(ValueError):
        await fan_out(range(4), work)
    assert sorted(cleaned) == [0, 1, 2, 3]


async def test_cancelling_the_caller_cancels_every_host() -> None:
    cleaned: list[int] = []

    async def work(n: int) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(n)

    task = asyncio.ensure_future(fan_out(range(3), work, limit=2))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cleaned) == [0, 1]  # the third never got past the gate


async def test_the_fanout_applies_to_the_direct_hosts_and_again_behind_each_gateway() -> None:
    """Each gateway connects to its own targets, so each gets the whole fanout (issue 19 point 5)."""
    gw1, gw2 = Target("gw1", "127.0.0.1", 7001), Target("gw2", "127.0.0.1", 7002)
    hosts = [Target(f"h{i}", "127.0.0.1", 7000 + i, via=via) for i, via in enumerate([None, gw1, gw2] * 4)]
    running: dict[str | None, int] = {}
    peaks: dict[str | None, int] = {}
    release = asyncio.Event()

    async def work(target: Target) -> None:
        hop = target.via.name if target.via else None
        running[hop] = running.get(hop, 0) + 1
        peaks[hop] = max(peaks.get(hop, 0), running[hop])
        if sum(running.values()) == 6:  # two per hop at once, then let them all go
            release.set()
        await release.wait()
        running[hop] -= 1

    await asyncio.wait_for(fan_out(hosts, work, limit=per_gateway(2, lambda t: t)), 10)
    assert peaks == {None: 2, "gw1": 2, "gw2": 2}

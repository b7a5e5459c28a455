"""Bounded resources: no fd, memory or zombie growth; connection floods; slow readers.

The agent runs in this test process, so this process's fd count and RSS are the
agent's (plus the controller's, which must not grow either).
"""

from __future__ import annotations

import asyncio
import resource
from pathlib import Path

import psutil
import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from shoal.controller.targets import Target
from shoal.protocol.errors import ShoalConnectionError
from tests.agents import running_agents, target_for
from tests.debris import marked, tokens_of, zombie_children
from tests.waiting import wait_for_async

SEQUENTIAL_COMMANDS = 10_000
WARMUP_COMMANDS = 200
# fds that may legitimately appear between the two counts: the metrics sampler's
# or logging's lazily opened files, an epoll resize. Per-command leaks would show
# up as thousands.
FD_SLACK = 4
# RSS may settle a little higher after warm-up (allocator arenas, interned
# strings, grown dicts); a per-command leak of even 1 KiB would add ~10 MiB.
RSS_SLACK = 8 * 1024 * 1024

FLOOD = 1000
MAX_CONNECTIONS = 200
HELD = 50


async def _run(client: AgentClient, command: Command) -> int:
    return (await (await client.exec(command)).wait()).status


@pytest.mark.slow
async def test_ten_thousand_sequential_commands_leave_no_fd_rss_or_zombie_growth() -> None:
    me = psutil.Process()
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        true = Command(argv=["true"])
        try:
            for _ in range(WARMUP_COMMANDS):
                assert await _run(client, true) == 0
            fds, rss = me.num_fds(), me.memory_info().rss
            failures = 0
            for _ in range(SEQUENTIAL_COMMANDS):
                failures += await _run(client, true) != 0
            fds_after, rss_after = me.num_fds(), me.memory_info().rss
        finally:
            await client.close()
        assert agent.running.count == 0
    assert failures == 0
    assert fds_after <= fds + FD_SLACK, f"fds grew from {fds} to {fds_after}"
    assert rss_after <= rss + RSS_SLACK, f"RSS grew from {rss >> 20} MiB to {rss_after >> 20} MiB"
    assert zombie_children() == []


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


async def _one_visit(target: Target) -> str:
    """Connect, run `true`, leave: "served", or the reason we were turned away."""
    try:
        client = await AgentClient.connect(target, timeout=30)
    except ShoalConnectionError as exc:
        return exc.reason
    try:
        return "served" if await _run(client, Command(argv=["true"])) == 0 else "failed"
    finally:
        await client.close()


async def test_a_thousand_concurrent_connections_are_served_or_refused_cleanly(tmp_path: Path) -> None:
    _raise_fd_limit(4 * FLOOD + 1024)
    flag = tmp_path / "go"
    # Every visit comes from 127.0.0.1 at once: lift the startup caps, which would
    # (rightly) turn most of such a burst away, to exercise max_connections itself.
    caps = {"limits.max_startups": FLOOD, "limits.max_startups_per_source": FLOOD}
    async with running_agents(**{"limits.max_connections": MAX_CONNECTIONS, **caps}) as (agent,):
        target = target_for(agent)
        held = [await AgentClient.connect(target, timeout=5) for _ in range(HELD)]
        try:
            waiting = [await c.exec(Command(argv=["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done"]))
                       for c in held]
            outcomes = await asyncio.gather(*(_one_visit(target) for _ in range(FLOOD)))
            flag.touch()
            held_results = [await p.wait() for p in waiting]
        finally:
            for c in held:
                await c.close()
        await wait_for_async(lambda: not agent.sessions)
    refused = [o for o in outcomes if "too_many_connections" in o]
    assert outcomes.count("served") + len(refused) == FLOOD, sorted(set(outcomes))
    assert refused and outcomes.count("served") >= MAX_CONNECTIONS - HELD
    assert all("limit (200) reached" in o for o in refused)
    assert [r.status for r in held_results] == [0] * HELD  # the existing sessions never noticed


async def test_a_slow_reader_does_not_slow_another_connection() -> None:
    big, fast_size = 64 * 1024 * 1024, 32 * 1024 * 1024
    async with running_agents() as (agent,):
        slow = await AgentClient.connect(target_for(agent), timeout=5)
        fast = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            stalled = await slow.exec(Command(argv=["head", "-c", str(big), "/dev/zero"]))
            [token] = tokens_of(agent)
            stream = await fast.exec(Command(argv=["head", "-c", str(fast_size), "/dev/zero"]))
            got = 0
            async for event in stream:
                got += len(event.data)
            assert got == fast_size and (await stream.wait()).status == 0
            assert stalled.result is None and marked(token)  # the slow one is blocked, not finished
            assert _buffered(stalled) <= 4 * 1024 * 1024  # ...and held to its window, not buffered
            drained = 0
            async for event in stalled:
                drained += len(event.data)
            assert drained == big and (await stalled.wait()).status == 0
        finally:
            await slow.close()
            await fast.close()


def _buffered(proc: object) -> int:
    """Output the controller holds for `proc` that nobody has read yet."""
    return sum(len(e.data) for e in getattr(proc, "_events"))

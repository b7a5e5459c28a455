"""Timeouts and cancellation end to end: real agents, real process trees, psutil checks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import psutil

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command, RemoteProcess
from shoal.controller.result import UNREACHABLE
from tests.agents import running_agents, target_for
from tests.debris import marked, marker_of
from tests.waiting import wait_for_async


async def _output_until(proc: RemoteProcess, *needles: bytes) -> bytearray:
    """Read output until every needle has been seen."""
    seen = bytearray()
    async for event in proc:
        seen += event.data
        if all(n in seen for n in needles):
            break
    return seen


def _in_other_session(token: str, root: int) -> list[psutil.Process]:
    root_sid = os.getsid(root)
    return [p for p in marked(token) if os.getsid(p.pid) != root_sid]


async def test_timeout_kills_the_whole_tree_including_a_setsid_grandchild() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(shell="setsid sleep 300 & echo up; sleep 300", timeout=1, kill_grace=1))
            assert proc.pid is not None
            token = marker_of(proc.pid)
            await _output_until(proc, b"up")
            await wait_for_async(lambda: _in_other_session(token, proc.pid), timeout=5)
            res = await proc.wait()
        finally:
            await client.close()
        await wait_for_async(lambda: not marked(token), timeout=5)
    assert res.timed_out and res.status == UNREACHABLE and res.error.startswith("timed out after")
    assert res.error_code == "timeout" and not res.cancelled


async def test_child_trapping_sigterm_gets_sigkill_after_the_grace() -> None:
    script = "trap 'echo got-TERM' TERM; echo up; while :; do sleep 0.05; done"
    async with running_agents(**{"limits.kill_grace": 0.5}) as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(shell=script, timeout=0.5))
            token = marker_of(proc.pid or 0)
            out = await _output_until(proc, b"up")
            async for event in proc:
                out += event.data
            res = await proc.wait()
        finally:
            await client.close()
        assert not marked(token)
    assert b"got-TERM" in out  # SIGTERM came first and was survived...
    assert res.signal == signal.SIGKILL  # ...so SIGKILL ended it once the grace was over
    assert res.timed_out and res.status == UNREACHABLE and res.error.startswith("timed out after")


async def test_a_signal_death_is_not_reported_as_a_timeout() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            killed = await (await client.exec(Command(shell="kill -TERM $$", timeout=30))).wait()
            timed = await (await client.exec(Command(argv=["sleep", "30"], timeout=0.2, kill_grace=0))).wait()
        finally:
            await client.close()
    assert killed.status == 128 + signal.SIGTERM and killed.signal == signal.SIGTERM
    assert not killed.timed_out and killed.error is None and killed.reason == "killed by signal 15 (TERM)"
    assert timed.timed_out and timed.status == UNREACHABLE and timed.reason == "timed out after 0.2s"


_TWO_HANDLERS = r"""
import os, signal, sys, time
def on(name, code):
    def handler(*_):
        os.write(1, f"{name} got {signal.Signals(_[0]).name}\n".encode())
        if name == "parent":
            os.waitpid(child, 0)
        os._exit(code)
    return handler
child = os.fork()
me = ("child", 0) if child == 0 else ("parent", 3)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, on(*me))
os.write(1, f"{me[0]} ready\n".encode())
while True:
    time.sleep(1)
"""


async def test_cancel_sends_sigint_to_the_whole_process_group_first() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(argv=[sys.executable, "-c", _TWO_HANDLERS], kill_grace=5))
            token = marker_of(proc.pid or 0)
            out = await _output_until(proc, b"parent ready", b"child ready")
            proc.cancel()
            async for event in proc:
                out += event.data
            res = await proc.wait()
        finally:
            await client.close()
        await wait_for_async(lambda: not marked(token), timeout=5)
    assert b"parent got SIGINT" in out and b"child got SIGINT" in out
    assert b"SIGTERM" not in out
    assert res.cancelled and res.status == 3 and not res.timed_out


async def test_cancel_escalates_when_sigint_is_ignored() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await client.exec(Command(shell="trap '' INT TERM; echo up; exec sleep 300", kill_grace=0.2))
            token = marker_of(proc.pid or 0)
            await _output_until(proc, b"up")
            proc.cancel()
            res = await asyncio.wait_for(proc.wait(), 10)
        finally:
            await client.close()
        assert not marked(token)
    assert res.cancelled and res.signal == signal.SIGKILL and res.status == 128 + signal.SIGKILL

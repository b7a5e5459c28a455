"""A controller that goes away must take its commands with it (unless they detach).

The controller here is the real `shoal run` CLI in a subprocess, killed or
interrupted with real signals; the agents run in-process on a background thread
so the test can read their request markers and counters.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO

import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from tests.agents import AgentThread, running_agents, target_for
from tests.debris import marked, tokens_of
from tests.waiting import wait_for, wait_for_async
from tests.programs import SHOAL

# A tree that tries every way of outliving its parent: a daemon (setsid and a
# double fork, reparented away from the command), a child ignoring SIGTERM, and
# the shell itself waiting on them.
_STUBBORN_TREE = ("setsid sh -c 'sleep 300 &'; sh -c 'trap \"\" TERM; exec sleep 300' & "
                  "echo up; wait")


class Cli:
    """`shoal run` in a subprocess of its own session, its output collected by threads."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*SHOAL, "run", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, cwd=str(Path(__file__).resolve().parents[2]),
        )
        self.out = bytearray()
        self.err = bytearray()
        self._threads = [threading.Thread(target=_drain, args=(pipe, buf), daemon=True)
                         for pipe, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    def wait(self, timeout: float = 20) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def _drain(pipe: IO[bytes] | None, buf: bytearray) -> None:
    assert pipe is not None
    for chunk in iter(lambda: pipe.read1(65536), b""):
        buf.extend(chunk)


def _all_marked(tokens: list[str]) -> list[object]:
    return [p for t in tokens for p in marked(t)]


def test_killed_controller_leaves_nothing_running_on_the_agent() -> None:
    with AgentThread() as t:
        cli = Cli(t.targets_spec(), "--", _STUBBORN_TREE)
        try:
            wait_for(lambda: b"up" in cli.out, timeout=10)
            tokens = wait_for(lambda: t.call(tokens_of, t.agents[0]))
            assert isinstance(tokens, list)
            wait_for(lambda: len(_all_marked(tokens)) >= 3)  # the shell, the daemon, the TERM-ignorer
            cli.proc.send_signal(signal.SIGKILL)
            wait_for(lambda: not _all_marked(tokens), timeout=5)
            wait_for(lambda: t.agents[0].running.count == 0)
        finally:
            cli.stop()


async def test_dropped_connection_with_unread_output_frees_the_request() -> None:
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        proc = await client.exec(Command(shell="head -c 20000000 /dev/zero; sleep 300"), window=65536)
        tokens = tokens_of(agent)
        await wait_for_async(lambda: agent.running.count == 1 and marked(tokens[0]))
        client.abort()
        await wait_for_async(lambda: not marked(tokens[0]), timeout=5)
        await wait_for_async(lambda: agent.running.count == 0, timeout=5)
        assert proc.result is not None and proc.result.error_code == "connection_lost"


async def test_detached_command_survives_the_disconnect_as_a_job_keeping_its_output(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    script = f"echo start; while [ ! -e {flag} ]; do sleep 0.05; done; echo end"
    async with running_agents() as (agent,):
        client = await AgentClient.connect(target_for(agent), timeout=5)
        started = await (await client.exec(Command(shell=script, detach=True))).wait()
        assert started.job is not None
        client.abort()
        await wait_for_async(lambda: not agent.sessions)
        await asyncio.sleep(0)  # any kill would have been sent by now
        job = agent.jobs.jobs[started.job]
        assert job.result is None and marked(job.child.token)
        flag.touch()
        await wait_for_async(lambda: job.result is not None and agent.running.count == 0, timeout=10)
        again = await AgentClient.connect(target_for(agent), timeout=5)
        try:
            proc = await again.exec(Command(attach=started.job))
            assert b"".join([e.data async for e in proc]) == b"start\nend\n"
            assert (await proc.wait()).status == 0
        finally:
            await again.close()


@pytest.mark.parametrize("hosts", [2])
def test_first_ctrl_c_cancels_on_every_host(hosts: int) -> None:
    with AgentThread(hosts) as t:
        cli = Cli(t.targets_spec(), "--", "echo up; exec sleep 300")
        try:
            wait_for(lambda: cli.out.count(b"up") == hosts, timeout=10)
            tokens = wait_for(lambda: len(ts := [x for a in t.agents for x in t.call(tokens_of, a)]) == hosts and ts)
            assert isinstance(tokens, list)
            cli.proc.send_signal(signal.SIGINT)
            assert cli.wait() == 130
            assert not _all_marked(tokens)
        finally:
            cli.stop()
    assert b"interrupted, cancelling on every host" in cli.err


def test_second_ctrl_c_stops_waiting_exits_130_and_kills() -> None:
    with AgentThread(2, **{"limits.kill_grace": 60}) as t:
        cli = Cli(t.targets_spec(), "--", "trap '' INT TERM; echo up; exec sleep 300")
        try:
            wait_for(lambda: cli.out.count(b"up") == 2, timeout=10)
            tokens = wait_for(lambda: len(ts := [x for a in t.agents for x in t.call(tokens_of, a)]) == 2 and ts)
            assert isinstance(tokens, list)
            cli.proc.send_signal(signal.SIGINT)
            wait_for(lambda: b"interrupted" in cli.err)
            assert cli.proc.poll() is None  # the commands ignore SIGINT: still waiting
            cli.proc.send_signal(signal.SIGINT)
            assert cli.wait() == 130
            wait_for(lambda: not _all_marked(tokens), timeout=5)
        finally:
            cli.stop()


def test_agent_lost_mid_command_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    script = f"echo up; while [ ! -e {flag} ]; do sleep 0.05; done; echo done"
    with AgentThread(3) as t:
        names = t.addresses
        cli = Cli(t.targets_spec(), "--", script)
        try:
            wait_for(lambda: cli.out.count(b"up") == 3, timeout=10)
            lost = t.agents[1]
            t.call(lambda: [s.transport.abort() for s in list(lost.sessions) if s.transport])
            wait_for(lambda: f"{names[1]}: lost: connection lost".encode() in cli.err, timeout=10)
            assert cli.proc.poll() is None  # the others are still running
            flag.touch()
            assert cli.wait() == 255
        finally:
            cli.stop()
    assert cli.out.count(b"done") == 2
    assert f"{names[0]}: done".encode() in cli.out and f"{names[2]}: done".encode() in cli.out


"""Commands start clean (issue 15, point 13): signals, environment, working directory, SHOAL_*.

The agent of the first tests is a child process started the way that leaks state
into it: with `&` from a non-interactive shell, which makes it ignore SIGINT and
SIGQUIT, and with the variables systemd hands a service. What its command sees is
read from the command's own /proc/self/status and environment.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.controller.batch import BatchLine, BatchRunner
from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions
from shoal.controller.pool import Session
from shoal.controller.targets import Target
from tests.agents import AgentThread, running_agents, shoal, target_for
from tests.e2e.test_exec import Collect, run_one

ROOT = Path(__file__).resolve().parents[2]

SYSTEMD_ENV = {"NOTIFY_SOCKET": "/run/systemd/notify", "LISTEN_FDS": "1", "LISTEN_PID": "1",
               "LISTEN_FDNAMES": "x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1",
               "INVOCATION_ID": "0123abcd", "JOURNAL_STREAM": "8:1234", "KEPT_BY_AGENT": "yes"}

# `&` in a non-interactive shell: SIGINT and SIGQUIT ignored, stdin /dev/null unless
# redirected (fd 3 keeps the pool's stdin, whose EOF tells it to stop).
BACKGROUND = 'exec 3<&0; "$0" -m tests.agent_pool 127.0.0.1 <&3 & wait'


@pytest.fixture
def backgrounded_agent() -> Iterator[Target]:
    env = {**os.environ, **SYSTEMD_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["/bin/sh", "-c", BACKGROUND, sys.executable], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line, "agent did not start"
        yield Target(name="bg", host="127.0.0.1", port=int(json.loads(line)["port"]))
    finally:
        proc.stdin.close()
        proc.wait(30)
        proc.stdout.close()


def _mask(status: bytes, field: bytes) -> int:
    line = next(l for l in status.splitlines() if l.startswith(field + b":"))
    return int(line.split()[1], 16)


async def test_backgrounded_agent_runs_commands_with_default_signals(backgrounded_agent: Target) -> None:
    out, _, res = await run_one(backgrounded_agent, Command(argv=["cat", "/proc/self/status"]))
    assert res.status == 0
    assert _mask(out, b"SigBlk") == 0
    ignored = _mask(out, b"SigIgn")
    assert not ignored & (1 << (signal.SIGQUIT - 1)), "the command inherited the agent's ignored SIGQUIT"
    assert not ignored & (1 << (signal.SIGINT - 1))
    assert ignored == 0


async def test_agent_private_variables_stay_out_of_commands(backgrounded_agent: Target) -> None:
    out, _, res = await run_one(backgrounded_agent, Command(argv=["env"]))
    names = {line.partition(b"=")[0].decode() for line in out.splitlines()}
    assert "KEPT_BY_AGENT" in names
    assert not names & (set(SYSTEMD_ENV) - {"KEPT_BY_AGENT"})


async def test_default_working_directory_is_the_users_home() -> None:
    home = pwd.getpwuid(os.getuid()).pw_dir
    expected = home if os.path.isdir(home) else "/"
    async with running_agents() as (agent,):
        out, _, _ = await run_one(target_for(agent), Command(shell="pwd -P"))
        given, _, _ = await run_one(target_for(agent), Command(shell="pwd -P", cwd="/tmp"))
    assert out.decode().strip() == os.path.realpath(expected) != os.getcwd()
    assert given.decode().strip() == os.path.realpath("/tmp")


NODE_LINE = 'echo "$SHOAL_HOST $SHOAL_NODENUM $SHOAL_NUMNODES"'


def _node_lines(agents: AgentThread) -> list[str]:
    return [f"{a} {i} {len(agents.addresses)}" for i, a in enumerate(agents.addresses)]


def test_run_tells_each_command_which_target_it_is(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with AgentThread(3) as agents:
        status, out, _ = shoal(capsysbinary, "run", "-n", "-o", "json", agents.targets_spec(), "--", NODE_LINE)
    assert status == 0
    lines = sorted(json.loads(l)["data"].strip() for l in out.splitlines()
                   if json.loads(l).get("event") == "output")
    assert lines == sorted(_node_lines(agents))


async def test_batch_and_shell_tell_each_command_which_target_it_is() -> None:
    async with running_agents(3) as agents:
        targets = [target_for(a, f"node{i}") for i, a in enumerate(agents)]
        expected = {f"node{i}": f"node{i} {i} 3\n".encode() for i in range(3)}
        batch = Collect()
        await BatchRunner(targets, ConnectOptions()).run([BatchLine(NODE_LINE, 1)], [Command(shell=NODE_LINE)],
                                                         lambda i: batch)
        assert {h: bytes(o) for h, o in batch.out.items()} == expected

        shell = Collect()
        session = Session(targets, ConnectOptions(), notify=lambda line: None)
        try:
            await session.connect([t.name for t in targets])
            await session.run(Command(shell=NODE_LINE), shell, [t.name for t in targets])
        finally:
            await session.close()
        assert {h: bytes(o) for h, o in shell.out.items()} == expected

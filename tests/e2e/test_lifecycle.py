"""The real `shoal-agent` process: SIGTERM shutdown, SIGHUP reload, logging to stderr."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from shoal.hostio.keyfile import write_key_file
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.controller.targets import Target
from shoal.protocol.errors import AuthError, ShoalConnectionError
from shoal.protocol.handshake import SharedKey
from tests.debris import marked, marker_of
from tests.waiting import wait_for, wait_for_async
from tests.programs import SHOAL_AGENT

ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    """`shoal-agent` as a subprocess, stderr collected in a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = tmp / f"agent-{len(list(tmp.glob('agent-*.log')))}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [*SHOAL_AGENT, *args], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err, cwd=str(ROOT), env={**_outside_systemd(), **(env or {})},
            )

    def text(self) -> str:
        return self.log.read_text()

    def target(self) -> Target:
        found = wait_for(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", self.text()), timeout=15)
        assert isinstance(found, re.Match)
        return Target(name="agent", host="127.0.0.1", port=int(found.group(1)))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _outside_systemd() -> dict[str, str]:
    """Our environment minus systemd's markers, which change the log format."""
    return {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    started: list[AgentProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(tmp_path, *args, env=env)
        started.append(agent)
        return agent

    yield start
    for a in started:
        a.stop()


async def test_sigterm_says_goodbye_lets_commands_finish_kills_the_rest_and_exits_0(
        spawn: object, tmp_path: Path) -> None:
    agent = spawn("--listen", "127.0.0.1:0", "--kill-grace", "2", "--log-level", "info")  # type: ignore[operator]
    target = agent.target()
    flag = tmp_path / "go"
    client = await AgentClient.connect(target, timeout=10)
    try:
        polite = await client.exec(Command(shell=f"while [ ! -e {flag} ]; do sleep 0.05; done; echo finished"))
        stubborn = await client.exec(Command(shell="trap '' TERM; echo up; exec sleep 300"))
        stubborn_token = marker_of(stubborn.pid or 0)
        agent.proc.send_signal(signal.SIGTERM)
        await wait_for_async(lambda: client.close_reason, timeout=10)  # told: GOODBYE
        assert client.close_reason == "agent closed the connection: agent shutting down"
        await wait_for_async(lambda: _refused(target), timeout=10)  # stopped accepting
        flag.touch()  # the polite command ends within the grace
        out = b"".join([e.data async for e in polite])
        polite_result = await polite.wait()
        stubborn_result = await stubborn.wait()
    finally:
        await client.close()
    assert out == b"finished\n" and polite_result.status == 0
    assert stubborn_result.status == 255 and stubborn_result.error_code == "connection_lost"
    assert agent.proc.wait(15) == 0
    assert not marked(stubborn_token)


async def _refused(target: Target) -> bool:
    try:
        client = await AgentClient.connect(target, timeout=2)
    except ShoalConnectionError as exc:
        return exc.reason == "connection refused"
    await client.close()
    return False


async def test_sighup_reloads_keys_without_dropping_a_running_session(spawn: object, tmp_path: Path) -> None:
    old_key = write_key_file(tmp_path / "old.key", SharedKey.generate())
    new_key = write_key_file(tmp_path / "new.key", SharedKey.generate())
    config = tmp_path / "agent.toml"
    entry = '[[keys]]\nname = "{0}"\nfile = "{1}"\nallow = "all"\n'
    config.write_text(entry.format("old", tmp_path / "old.key"))
    agent = spawn("--config", str(config), "--listen", "127.0.0.1:0", "--log-level", "info")  # type: ignore[operator]
    target = agent.target()
    with pytest.raises(AuthError):
        await AgentClient.connect(target, key=new_key, timeout=10)
    flag = tmp_path / "go"
    client = await AgentClient.connect(target, key=old_key, timeout=10)
    try:
        across = await client.exec(Command(shell=f"echo before; while [ ! -e {flag} ]; do sleep 0.05; done; echo after"))
        config.write_text(entry.format("old", tmp_path / "old.key") + entry.format("new", tmp_path / "new.key"))
        agent.proc.send_signal(signal.SIGHUP)
        await wait_for_async(lambda: "configuration reloaded" in agent.text(), timeout=10)
        newcomer = await AgentClient.connect(target, key=new_key, timeout=10)
        assert newcomer.conn.key_id == new_key.key_id
        await newcomer.close()
        flag.touch()
        out = b"".join([e.data async for e in across])
        result = await across.wait()
    finally:
        await client.close()
    assert out == b"before\nafter\n" and result.status == 0
    assert agent.proc.poll() is None


def _wait_for_socket(path: Path) -> None:
    wait_for(path.exists, timeout=15)


@pytest.mark.parametrize("under_systemd", [{}, {"JOURNAL_STREAM": "8:1234"}, {"INVOCATION_ID": "abc"}])
def test_logs_go_to_stderr_without_timestamps_under_systemd(spawn: object, tmp_path: Path,
                                                            under_systemd: dict[str, str]) -> None:
    sock = tmp_path / "agent.sock"
    agent = spawn("--listen", f"unix:{sock}", "--log-level", "info", env=under_systemd)  # type: ignore[operator]
    line = wait_for(lambda: next((ln for ln in agent.text().splitlines() if "listening on" in ln), None), timeout=15)
    assert isinstance(line, str)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    if under_systemd:
        assert line == f"INFO shoal.agent: listening on unix:{sock}"
    else:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO shoal.agent: listening on unix:", line)


def test_log_level_hides_lower_levels(spawn: object, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = spawn("--listen", f"unix:{sock}", "--log-level", "warning")  # type: ignore[operator]
    _wait_for_socket(sock)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    assert "INFO" not in agent.text() and "listening on" not in agent.text()


def test_a_failed_reload_keeps_the_old_configuration_and_keys(tmp_path: Path) -> None:
    """A SIGHUP with a broken key file must not leave half a new configuration behind."""
    from shoal.agent.config import KeyPolicy
    from shoal.protocol.errors import ConfigError
    from tests.agents import make_agents

    good = tmp_path / "good.key"
    key = write_key_file(good, SharedKey.generate())
    policy = KeyPolicy(name="admin", file=str(good), allow_all=True)
    [agent] = make_agents(policies=(policy,))  # never started
    old_config, old_keys = agent.config, agent.keys
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    broken = agent.config.replace_from_cli(keys=(KeyPolicy(name="other", file=str(bad), allow_all=True),),
                                           **{"limits.max_connections": 7})
    with pytest.raises(ConfigError):
        agent.reload(broken, [])
    assert agent.config is old_config and agent.keys is old_keys
    assert agent.keys.get(key.key_id) is not None

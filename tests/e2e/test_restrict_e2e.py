"""A restricted key's request cannot choose which code runs through its env or cwd (issue 13, point 1).

Real agents on loopback, the real `shoal run` in-process. The decoy is an
executable `uptime` in a directory of the test's choosing that leaves a mark when
run, so "the allowed program ran, not the decoy" is checked on the file system.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from shoal.agent.config import KeyPolicy, load_config
from shoal.hostio.keyfile import write_key_file
from shoal.controller.cli.main import main as shoal_main
from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey
from tests.agents import AgentThread
from tests.rawpeer import audit_events


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[SharedKey, Path]]:
    out = {}
    for name in ("admin", "monitor", "roamer"):
        path = tmp_path / f"{name}.key"
        out[name] = (write_key_file(path), path)
    return out


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    """A directory holding an `uptime` that leaves decoy.ran behind."""
    folder = tmp_path / "decoy"
    folder.mkdir()
    script = folder / "uptime"
    script.write_text(f"#!/bin/sh\n/usr/bin/touch {tmp_path / 'decoy.ran'}\necho decoy\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def agent(start_agents: Callable[..., AgentThread], tmp_path: Path,
          keys: dict[str, tuple[SharedKey, Path]]) -> AgentThread:
    policies = (
        KeyPolicy(name="admin", file=str(keys["admin"][1]), allow_all=True),
        KeyPolicy(name="monitor", file=str(keys["monitor"][1]), commands=("uptime", "printenv TZ", "pwd", "printenv SHOAL_HOST"),
                  env=("LANG", "TZ")),
        KeyPolicy(name="roamer", file=str(keys["roamer"][1]), commands=("pwd", "./uptime"), cwd=True),
    )
    return start_agents(policies=policies, audit_log=str(tmp_path / "audit.jsonl"))


def run(agent: AgentThread, key: Path, *args: str) -> int:
    return shoal_main(["run", "-n", agent.targets_spec(), "--key-file", str(key), *args])


def denied(tmp_path: Path) -> list[dict[str, object]]:
    return audit_events(tmp_path / "audit.jsonl", event="denied")


@pytest.mark.parametrize("setting, variable", [
    ("PATH={decoy}", "PATH"),
    ("LD_PRELOAD={decoy}/lib.so", "LD_PRELOAD"),
    ("PYTHONPATH={decoy}", "PYTHONPATH"),
    ("FOO=1", "FOO"),
])
def test_an_unlisted_or_loader_variable_is_refused_and_nothing_runs(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path, decoy: Path,
        capsys: pytest.CaptureFixture[str], setting: str, variable: str) -> None:
    monitor_key, monitor_path = keys["monitor"]
    status = run(agent, monitor_path, "-e", setting.format(decoy=decoy), "--", "uptime")
    out, err = capsys.readouterr()
    assert status == 126 and out == ""
    assert err == (f"shoal: {agent.targets_spec()}: denied: permission denied for key {monitor_key.key_id}: "
                   f"environment variable {variable} not allowed\n")
    assert not (tmp_path / "decoy.ran").exists()
    [record] = denied(tmp_path)
    assert record["reason"] == f"environment variable {variable} not allowed"
    assert audit_events(tmp_path / "audit.jsonl", event="exec") == []


def test_programs_are_found_on_the_trusted_path_not_the_agents(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path, decoy: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent's own PATH (here: the test process's) starts with the decoy: a
    # restricted key still gets the system's uptime.
    monkeypatch.setenv("PATH", f"{decoy}:{os.environ['PATH']}")
    assert run(agent, keys["monitor"][1], "--", "uptime") == 0
    assert "load average" in capsys.readouterr().out
    assert not (tmp_path / "decoy.ran").exists()


def test_a_listed_variable_passes(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run(agent, keys["monitor"][1], "-e", "TZ=Europe/Paris", "--", "printenv", "TZ") == 0
    assert capsys.readouterr().out == "Europe/Paris\n"


def test_the_node_variables_always_pass(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # SHOAL_HOST and friends say which target this is and choose no code: no policy lists them.
    assert run(agent, keys["monitor"][1], "--", "printenv", "SHOAL_HOST") == 0
    assert capsys.readouterr().out == f"{agent.targets_spec()}\n"


def test_cwd_is_refused_unless_the_policy_allows_it(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(agent, keys["monitor"][1], "--cwd", str(tmp_path), "--", "pwd") == 126
    assert capsys.readouterr().err.endswith(": working directory not allowed\n")
    assert run(agent, keys["roamer"][1], "--cwd", str(tmp_path), "--", "pwd") == 0
    assert capsys.readouterr().out == f"{tmp_path}\n"


def test_a_relative_program_is_refused_even_when_listed(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path, decoy: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(agent, keys["roamer"][1], "--cwd", str(decoy), "--", "./uptime") == 126
    assert capsys.readouterr().err.endswith(": program must be a name or an absolute path\n")
    assert not (tmp_path / "decoy.ran").exists()


def test_an_allow_all_key_is_unaffected(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                        tmp_path: Path, decoy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(agent, keys["admin"][1], "-e", f"PATH={decoy}", "--cwd", str(tmp_path), "--", "uptime") == 0
    assert capsys.readouterr().out == "decoy\n"
    assert (tmp_path / "decoy.ran").exists()


@pytest.mark.parametrize("listed", ["LD_PRELOAD", "PATH", "BASH_ENV", "PYTHONSTARTUP", "PERL5OPT", "TMPDIR"])
def test_a_code_choosing_variable_in_a_policy_is_refused_at_load(tmp_path: Path, listed: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(f"""\
        [[keys]]
        name = "monitor"
        file = "/etc/shoal/monitor.key"
        commands = ["uptime"]
        env = ["LANG", "{listed}"]
        """))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}:5: {listed} can make a command load or run other code; "
                               "restricted keys never pass it")


def test_env_and_cwd_belong_to_listed_keys_only(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[[keys]]\nname = "a"\nfile = "/k"\nallow = "all"\ncwd = true\n')
    with pytest.raises(ConfigError, match=r":5: 'cwd' only applies to allow = \"listed\""):
        load_config(path)

"""--idle-timeout end to end: decided on the agent, it ends a silent command's whole
process tree, leaves a chatty one alone, and is never sent to an agent that does not
announce the feature."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from shoal.protocol.errors import BadRequestError
from shoal.protocol.fields import check_request
from shoal.protocol.messages import Exec
from tests.agents import AgentThread, shoal


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 2}


def _exit(out: bytes) -> dict:  # type: ignore[type-arg]
    return next(e for e in map(json.loads, out.splitlines()) if e["event"] == "exit")


def test_silent_command_tree_is_ended(agents: AgentThread, tmp_path: Path,
                                      capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    pids = tmp_path / "pids"
    command = (f"sleep 300 & echo $! >> {pids}; setsid sleep 300 & echo $! >> {pids}; "
               f"echo $$ >> {pids}; echo started; exec sleep 300")
    status, out, err = shoal(capsysbinary, "run", agents.addresses[0], "-n", "-o", "json",
                             "--idle-timeout", "0.5", "--kill-grace", "1", "--", command)
    exit_ = _exit(out)
    assert status == 255 and exit_["outcome"] == "idle_timeout" and exit_["error_code"] == "idle_timeout"
    assert not exit_["timed_out"]
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 3
    for pid in started:  # the process table: every process of the tree is gone (or a reaped zombie)
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass


def test_chatty_command_outlives_its_idle_timeout(agents: AgentThread,
                                                  capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    # 2 s of output, a line every 0.2 s: longer than the idle timeout, never silent for it
    status, out, err = shoal(capsysbinary, "run", agents.addresses[0], "-n", "-o", "json",
                             "--idle-timeout", "1.5", "--", "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.2; done")
    assert status == 0 and _exit(out)["outcome"] == "ok"


def test_batch_takes_idle_timeout(agents: AgentThread, tmp_path: Path,
                                  capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    batch = tmp_path / "cmds"
    batch.write_text("echo one\nsleep 300\necho never\n")
    status, out, err = shoal(capsysbinary, "batch", agents.addresses[0], str(batch), "-o", "json",
                             "--idle-timeout", "0.5")
    exits = [e for e in map(json.loads, out.splitlines()) if e["event"] == "exit"]
    assert status == 255 and [(e["command"], e["outcome"]) for e in exits] == [(1, "ok"), (2, "idle_timeout")]


def test_agent_without_the_feature_is_not_sent_the_command(agents: AgentThread, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    monkeypatch.setattr("shoal.protocol.connection.AGENT_FEATURES", ())  # an agent from before the feature
    marker = tmp_path / "ran"
    status, out, err = shoal(capsysbinary, "run", agents.addresses[1], "-n", "-o", "json",
                             "--idle-timeout", "5", "--", f"touch {marker}")
    exit_ = _exit(out)
    assert status == 1 and "does not support --idle-timeout" in exit_["error"] and not marker.exists()


@pytest.mark.parametrize(("fields", "why"), [
    ({"idle_timeout": 0.0}, "more than 0"),
    ({"idle_timeout": 1e12}, "between"),
])
def test_bad_idle_timeouts_are_bad_requests(fields: dict, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(BadRequestError, match=why):
        check_request(Exec(1, shell="true", **fields))


def test_shell_idle_setting_reaches_the_command() -> None:
    from shoal.controller.term.repl import ReplSettings, _seconds_or_off
    from shoal.protocol.errors import ConfigError

    settings = ReplSettings()
    settings.idle_timeout = _seconds_or_off(":idle", "2.5")
    assert settings.command("true").idle_timeout == 2.5
    assert _seconds_or_off(":idle", "off") is None
    with pytest.raises(ConfigError, match=":idle must be positive"):
        _seconds_or_off(":idle", "-1")

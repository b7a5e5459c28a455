"""What the agent does when its audit log cannot be written (issue 13, point 14).

/dev/full stands in for a full disk: it opens fine and every write fails with ENOSPC.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from tests.agents import AgentThread, shoal
from tests.rawpeer import DEADLINE
from tests.programs import SHOAL_AGENT

FULL = "/dev/full"


@pytest.fixture
def shoal_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(logging.getLogger("shoal"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="shoal.audit")
    return caplog


def test_by_default_commands_run_and_the_failure_is_reported_once(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], shoal_logs: pytest.LogCaptureFixture) -> None:
    with AgentThread(1, audit_log=FULL) as agent:
        for _ in range(2):
            status, out, _ = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--", "echo", "ran")
            assert (status, out) == (0, b"ran\n")
    reports = [r.getMessage() for r in shoal_logs.records if r.levelno == logging.ERROR]
    assert reports == [f"cannot write audit log {FULL}: No space left on device"]


def test_audit_required_refuses_commands_and_runs_nothing(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    marker = tmp_path / "ran"
    with AgentThread(1, audit_log=FULL, audit_required=True) as agent:
        status, out, err = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--", "touch", str(marker))
        spec = agent.targets_spec()
    assert (status, out) == (255, b"")
    assert err == f"shoal: {spec}: failed: refused: the agent cannot write its audit log (audit_required)\n".encode()
    assert not marker.exists()


def test_audit_required_runs_commands_while_the_audit_log_works(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    audit = tmp_path / "audit.jsonl"
    with AgentThread(1, audit_log=str(audit), audit_required=True) as agent:
        status, out, _ = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--", "echo", "ran")
    assert (status, out) == (0, b"ran\n")
    assert '"event": "exec_request"' in audit.read_text()


@pytest.mark.parametrize("args, message", [
    (["--audit-required"], "shoal-agent: --audit-required: audit_required needs an audit log (audit_log)\n"),
    (["--audit-log", "/nonexistent/audit.jsonl"],
     "shoal-agent: /nonexistent/audit.jsonl: cannot open audit log: No such file or directory\n"),
])
def test_a_bad_audit_setting_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run([*SHOAL_AGENT, "--listen", "127.0.0.1:0", *args], capture_output=True,
                          text=True, timeout=DEADLINE, stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stderr) == (2, message)

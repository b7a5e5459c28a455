"""Audit and log records stay bounded whatever a controller sends (issue 13, point 9)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shoal.agent.clip import AUDIT_FIELD_BYTES, AUDIT_LIST_ITEMS, clip
from tests.agents import AgentThread, shoal
from tests.rawpeer import audit_events

# Under Linux's 128 KiB cap on one exec argument, so the command really runs.
RUNNABLE = 100_000
MIB = 1024 * 1024


@pytest.fixture
def shoal_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(logging.getLogger("shoal"), "propagate", True)
    caplog.set_level(logging.DEBUG, logger="shoal")
    return caplog


def cut(text: str) -> str:
    return f"{text[:AUDIT_FIELD_BYTES]}…[truncated, {len(text.encode())} bytes]"


@pytest.mark.parametrize("size, events", [(RUNNABLE, ["exec", "exit"]), (MIB, ["exec_failed"])])
def test_a_huge_argument_is_cut_in_the_audit_and_the_log(
        tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], shoal_logs: pytest.LogCaptureFixture,
        size: int, events: list[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    command = "true " + "x" * size
    with AgentThread(1, audit_log=str(audit)) as agent:
        status, _, _ = shoal(capsysbinary, "run", "-n", agent.targets_spec(), "--", command)
    assert status == (0 if size == RUNNABLE else 126)
    for event in events:
        [record] = audit_events(audit, event=event)
        assert record["argv"] == ["/bin/sh", "-c", cut(command)]
    longest = max(len(line) for line in audit.read_text().splitlines())
    assert longest < 2 * AUDIT_FIELD_BYTES
    agent_lines = [r.getMessage() for r in shoal_logs.records if r.name in ("shoal.agent", "shoal.audit")]
    assert any(f"{event} " in line and "…[truncated, " in line for line in agent_lines for event in events)
    assert max(len(line) for line in agent_lines) < 2 * AUDIT_FIELD_BYTES


def test_clip_keeps_whole_characters_and_counts_what_it_dropped() -> None:
    text = "é" * AUDIT_FIELD_BYTES  # two bytes each: the limit falls between characters
    assert clip(text) == "é" * (AUDIT_FIELD_BYTES // 2) + f"…[truncated, {2 * AUDIT_FIELD_BYTES} bytes]"
    many = [str(i) for i in range(AUDIT_LIST_ITEMS + 10)]
    assert clip(many) == many[:AUDIT_LIST_ITEMS] + [f"…[truncated, {AUDIT_LIST_ITEMS + 10} items]"]
    assert clip({"short": "x", "n": 3}) == {"short": "x", "n": 3}

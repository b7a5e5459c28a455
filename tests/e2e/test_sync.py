"""`shoal.controller.run`: one blocking call against real agents on loopback (issue 15, point 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

import shoal.controller
from shoal.hostio.keyfile import write_key_file
from shoal.protocol.errors import ConfigError
from tests.agents import AgentThread, closed_port


def test_run_returns_each_hosts_output_in_target_order(tmp_path: Path) -> None:
    key_path = tmp_path / "fleet.key"
    key = write_key_file(key_path)
    down = f"127.0.0.1:{closed_port()}"
    with AgentThread(2, keys=[key]) as agents:
        up = agents.addresses
        outputs = shoal.controller.run(f"{up[0]},{down},{up[1]}",
                                       'echo "out $SHOAL_NODENUM"; echo err >&2; exit $SHOAL_NODENUM',
                                       key_file=str(key_path), timeout=30)
    assert list(outputs) == [up[0], down, up[1]]
    first, lost, third = outputs.values()
    assert (first.status, first.stdout, first.stderr, first.outcome, first.ok) == (0, b"out 0\n", b"err\n", "ok", True)
    assert (lost.status, lost.stdout, lost.outcome) == (255, b"", "unreachable")
    assert "refused" in (lost.result.error or "")
    assert (third.status, third.stdout, third.outcome) == (2, b"out 2\n", "failed")
    assert (lost.outcome_text, third.outcome_text) == ("unreachable: connection refused", "failed (code 2)")


def test_argv_timeout_and_missing_programs_are_outcomes() -> None:
    with AgentThread(1) as agents:
        [host] = agents.addresses
        [slow] = shoal.controller.run(host, ["sleep", "60"], timeout=0.5).values()
        [gone] = shoal.controller.run(host, ["/no/such/program"]).values()
        [said] = shoal.controller.run(host, ["printf", "%s", "a b"], cwd="/", env={"X": "1"}).values()
        [quiet] = shoal.controller.run(host, "echo start; sleep 60", idle_timeout=0.5).values()
    assert slow.outcome == "timed_out" and slow.status != 0 and slow.outcome_text == "timed_out (after 0.5s)"
    assert (quiet.outcome, quiet.outcome_text, quiet.stdout) == ("idle_timeout", "idle_timeout (no output for 0.5s)",
                                                                 b"start\n")
    assert gone.outcome == "failed" and gone.status == 127
    assert gone.outcome_text == "failed: /no/such/program: command not found"
    assert said.stdout == b"a b" and said.outcome == "ok"


def test_a_bad_pattern_raises() -> None:
    with pytest.raises(ConfigError):
        shoal.controller.run("web[3-", "true")


async def test_inside_a_running_loop_it_points_at_run_async() -> None:
    with pytest.raises(RuntimeError, match=r"await shoal\.controller\.run_async"):
        shoal.controller.run("127.0.0.1", "true")
    with AgentThread(1) as agents:
        outputs = await shoal.controller.run_async(agents.addresses[0], "echo hi")
    assert [o.stdout for o in outputs.values()] == [b"hi\n"]

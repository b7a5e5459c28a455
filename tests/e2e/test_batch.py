"""`shoal batch`: files of commands run in order per host, as a user sees them.

Four agents in two child processes (tests/agent_pool.py): 127.0.0.1-2 with a plain
environment and 127.0.0.3-4 with BATCH_FAIL=1, so `test -z "$BATCH_FAIL"` really
fails on half the hosts, the way a middle command fails on some machines.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.controller.batch import parse_batch, read_batch
from shoal.controller.cli.main import main
from shoal.controller.nodeset import NodeSet
from shoal.protocol.errors import ConfigError
from tests.agents import AgentThread
from tests.programs import SHOAL
from tests.agent_pool import start_pool, stop_pool


SCRIPT = """\
# stop here on hosts that have BATCH_FAIL set
echo one

test -z "$BATCH_FAIL"
   # an indented comment
echo three \\
  continued
"""


class Fleet:
    def __init__(self, plain_port: int, failing_port: int) -> None:
        self.plain = [f"127.0.0.{i}:{plain_port}" for i in (1, 2)]
        self.failing = [f"127.0.0.{i}:{failing_port}" for i in (3, 4)]
        self.all = self.plain + self.failing
        self.spec = f"127.0.0.[1-2]:{plain_port},127.0.0.[3-4]:{failing_port}"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    env = {k: v for k, v in os.environ.items() if k != "BATCH_FAIL"}
    plain, plain_port = start_pool("127.0.0.[1-2]", env=env)
    try:
        failing, failing_port = start_pool("127.0.0.[3-4]", env={**env, "BATCH_FAIL": "1"})
        assert plain_port and failing_port, "an agent pool did not start"
        try:
            yield Fleet(plain_port, failing_port)
        finally:
            stop_pool(failing)
    finally:
        stop_pool(plain)


def batch(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    status = main(["batch", *argv])
    out, err = capsysbinary.readouterr()
    return status, out.decode(), err.decode()


def said(out: str, hosts: list[str], text: str) -> set[str]:
    """Hosts with the prefixed line `host: text` in the output."""
    lines = set(out.splitlines())
    width = max(len(h) for h in hosts)
    return {h for h in hosts if f"{h}:{' ' * (width - len(h))} {text}" in lines}


def table_row(err: str, number: int) -> list[str]:
    """The summary table's row for command `number`, split into its columns."""
    for line in err.splitlines():
        if line.startswith(f"{number}  "):
            return [cell.strip() for cell in line.split("  ") if cell.strip()]
    raise AssertionError(f"no row {number} in:\n{err}")


def sets(*groups: list[str]) -> str:
    return str(NodeSet([h for g in groups for h in g]))


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "steps.shoal"
    path.write_text(SCRIPT)
    return path


# -- parsing -------------------------------------------------------------------

def test_comments_blanks_and_continuations_are_parsed_with_line_numbers() -> None:
    lines = parse_batch(SCRIPT, "steps")
    assert [(c.text, c.line) for c in lines] == [
        ("echo one", 2), ('test -z "$BATCH_FAIL"', 4), ("echo three   continued", 6)]


def test_a_backslash_on_the_last_line_is_an_error_naming_path_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_batch("echo a\n\necho b \\\n", "f.shoal")
    assert info.value.where == "f.shoal:3"


def test_a_file_of_only_comments_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="no commands"):
        read_batch(str(path), io.BytesIO())


def test_bad_files_exit_2_with_one_line_naming_them(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "bin").write_bytes(b"echo ok\necho \xff\n")
    status, _, err = batch(capsysbinary, "127.0.0.1:1", str(tmp_path / "bin"))
    assert (status, err) == (2, f"shoal: {tmp_path / 'bin'}:2: batch file is not UTF-8 text\n")
    status, _, err = batch(capsysbinary, "127.0.0.1:1", str(tmp_path / "missing"))
    assert status == 2 and err.startswith("shoal: ") and "missing" in err and len(err.splitlines()) == 1


# -- running -------------------------------------------------------------------

def test_a_host_stops_at_its_first_failing_command(fleet: Fleet, script: Path,
                                                   capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = batch(capsysbinary, fleet.spec, str(script))
    assert status == 1
    assert said(out, fleet.all, "one") == set(fleet.all)
    assert said(out, fleet.all, "three continued") == set(fleet.plain)
    failed_lines = [f"shoal: {h}: failed (code 1)" for h in fleet.failing]
    assert sorted(err.splitlines()[:2]) == sorted(failed_lines)  # each failed host gets its line
    err = "\n".join(err.splitlines()[2:])
    assert err.splitlines()[0].split() == ["#", "COMMAND", "OK", "FAILED", "SKIPPED"]
    assert table_row(err, 1) == ["1", "echo one", f"4 {sets(fleet.all)}", "0", "0"]
    assert table_row(err, 2) == ["2", 'test -z "$BATCH_FAIL"', f"2 {sets(fleet.plain)}",
                                 f"2 {sets(fleet.failing)}", "0"]
    assert table_row(err, 3) == ["3", "echo three continued", f"2 {sets(fleet.plain)}", "0",
                                 f"2 {sets(fleet.failing)}"]


def test_keep_going_runs_every_command_everywhere(fleet: Fleet, script: Path,
                                                  capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = batch(capsysbinary, fleet.spec, str(script), "--keep-going")
    assert status == 1
    assert said(out, fleet.all, "three continued") == set(fleet.all)
    assert table_row(err, 3) == ["3", "echo three continued", f"4 {sets(fleet.all)}", "0", "0"]


def test_exit_status_is_the_largest_per_host_status(fleet: Fleet, tmp_path: Path,
                                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = tmp_path / "codes"
    path.write_text('test -z "$BATCH_FAIL" || exit 5\nexit 3\necho never\n')
    assert batch(capsysbinary, fleet.spec, str(path))[0] == 5
    status, out, err = batch(capsysbinary, fleet.plain[0], str(path), "-k")
    assert status == 3 and "never" in out
    assert batch(capsysbinary, ",".join(fleet.plain), str(path), "-q")[0] == 3


def test_commands_run_in_order_over_one_connection(tmp_path: Path,
                                                   capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """The agent's audit log shows one accepted connection carrying every command, in order."""
    path = tmp_path / "order"
    path.write_text("echo first\necho second\necho third\n")
    audit = tmp_path / "audit.jsonl"
    with AgentThread(1, audit_log=str(audit)) as agent:
        status, out, _ = batch(capsysbinary, agent.targets_spec(), str(path))
    assert status == 0
    assert [line.split()[-1] for line in out.splitlines()] == ["first", "second", "third"]
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["event"] for e in events].count("accepted") == 1
    execs = [e for e in events if e["event"] == "exec"]
    assert [e["argv"][-1] for e in execs] == ["echo first", "echo second", "echo third"]
    assert len({e["peer"] for e in execs}) == 1


def test_an_unreachable_host_fails_its_first_command_and_skips_the_rest(
        fleet: Fleet, script: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = batch(capsysbinary, f"{fleet.plain[0]},127.0.0.1:1", str(script))
    assert status == 255
    assert "shoal: 127.0.0.1:1: unreachable: connection refused" in err
    assert table_row(err, 1)[3] == "1 127.0.0.1:1"
    assert table_row(err, 3)[4] == "1 127.0.0.1:1"


def test_timeout_applies_to_each_command(fleet: Fleet, tmp_path: Path,
                                         capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    path = tmp_path / "slow"
    path.write_text("sleep 0.1\nsleep 30\necho not-reached\n")
    status, out, err = batch(capsysbinary, fleet.plain[0], str(path), "--timeout", "1")
    assert status == 255
    assert "timed_out (after 1s)" in err and "not-reached" not in out
    assert table_row(err, 1)[2].startswith("1 ") and table_row(err, 3)[4].startswith("1 ")


def test_stdin_is_the_batch_file_with_dash(fleet: Fleet) -> None:
    proc = subprocess.run([*SHOAL, "batch", ",".join(fleet.plain), "-"], input=b"echo from-stdin\nexit 4\n",
                          capture_output=True, timeout=60)
    assert proc.returncode == 4
    assert said(proc.stdout.decode(), fleet.plain, "from-stdin") == set(fleet.plain)
    assert table_row(proc.stderr.decode(), 2) == ["2", "exit 4", "0", f"2 {sets(fleet.plain)}", "0"]


def test_gather_mode_prints_each_command_once_per_host_set(fleet: Fleet, script: Path,
                                                           capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = batch(capsysbinary, fleet.spec, str(script), "-k", "-o", "gather")
    assert status == 1
    header = f"---------------\n{sets(fleet.all)} (4)\n---------------\n"
    assert out.startswith(f"=== 1: echo one\n{header}one\n=== 2: ")
    assert out.endswith(f"=== 3: echo three   continued\n{header}three continued\n")


def test_json_events_carry_their_command_number(fleet: Fleet, script: Path,
                                                capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = batch(capsysbinary, fleet.spec, str(script), "-o", "json")
    events = [json.loads(line) for line in out.splitlines()]
    assert status == 1
    exits = {(e["command"], e["host"]): e["status"] for e in events if e["event"] == "exit"}
    assert exits == {**{(1, h): 0 for h in fleet.all}, **{(2, h): 0 for h in fleet.plain},
                     **{(2, h): 1 for h in fleet.failing}, **{(3, h): 0 for h in fleet.plain}}
    assert [e["command"] for e in events if e["event"] == "summary"] == [1, 2, 3]


async def test_each_line_is_its_own_shell() -> None:
    # What README promises: `cd`, variables and `set` do not carry to the next line.
    from shoal.controller.batch import BatchRunner
    from shoal.controller.remote import Command
    from shoal.controller.fleet import ConnectOptions
    from tests.agents import running_agents, target_for
    from tests.e2e.test_exec import Collect

    lines = parse_batch("cd /proc\nX=set\nset -u\npwd -P; echo \"${X:-unset}\" \"$UNSET_VAR\"\n", "t")
    async with running_agents() as (agent,):
        seen = Collect()
        report = await BatchRunner([target_for(agent, "h")], ConnectOptions()).run(
            lines, [Command(shell=line.text) for line in lines], lambda i: seen)
    assert report.status == 0
    assert not seen.out["h"].decode().startswith("/proc")
    assert seen.out["h"].decode().splitlines()[-1] == "unset "

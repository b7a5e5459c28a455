"""`-o gather` (and json, outdir) on 30 agents whose hosts differ like real ones do.

The agents run in two child processes (tests/agent_pool.py), one agent per loopback
address 127.0.0.1-30, all on one port: 27 with a plain environment and 3 (127.0.0.4,
.17, .29) with TEST_VARIANT=other, so `echo ${TEST_VARIANT:-same}` really prints
something else on three hosts. An inventory sets the port, so host names are plain
addresses and the folded headers are predictable.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_pool import start_pool, stop_pool
from tests.agents import shoal


PLAIN = "127.0.0.[1-3,5-16,18-28,30]"
VARIANT = "127.0.0.[4,17,29]"
ALL = "127.0.0.[1-30]"
RULE = b"---------------\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The 30 agents; yields an inventory file that gives their port."""
    env = {k: v for k, v in os.environ.items() if k != "TEST_VARIANT"}
    for _ in range(5):  # the variant pool needs the plain pool's port on three more addresses
        plain, port = start_pool(PLAIN, 0, env)
        variant, got = start_pool(VARIANT, port, {**env, "TEST_VARIANT": "other"})
        if got:
            break
        stop_pool(plain)
    else:
        pytest.fail("could not find one port free on all 30 loopback addresses")
    inventory = tmp_path_factory.mktemp("inv") / "inventory.toml"
    inventory.write_text(f"[defaults]\nport = {port}\n")
    try:
        yield inventory
    finally:
        stop_pool(variant)
        stop_pool(plain)


def test_gather_prints_each_distinct_output_once_under_folded_hosts(
        fleet: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "-o", "gather",
                             "--", "echo ${TEST_VARIANT:-same}; echo done")
    assert status == 0
    assert out == (RULE + b"127.0.0.[1-3,5-16,18-28,30] (27)\n" + RULE + b"same\ndone\n"
                   + RULE + b"127.0.0.[4,17,29] (3)\n" + RULE + b"other\ndone\n")
    assert err.startswith(b"shoal: 30 ok, 0 failed, 0 unreachable in ") and err.count(b"\n") == 1


def test_gather_shows_stderr_apart_and_lists_non_zero_exits(
        fleet: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "-o", "gather",
                             "--", 'echo ok; echo "${TEST_VARIANT:-fine}" >&2; [ -z "$TEST_VARIANT" ] || exit 4')
    assert status == 4
    assert out == RULE + b"127.0.0.[1-30] (30)\n" + RULE + b"ok\n"
    lines = err.split(b"\n")
    assert b"\n".join(lines[:8]) == (
        RULE + b"127.0.0.[1-3,5-16,18-28,30] (27) (stderr)\n" + RULE + b"fine\n"
        + RULE + b"127.0.0.[4,17,29] (3) (stderr)\n" + RULE + b"other")
    assert lines[8] == b"shoal: 127.0.0.[4,17,29]: failed (code 4)"
    assert lines[9].startswith(b"shoal: 27 ok, 3 failed (127.0.0.[4,17,29]), 0 unreachable in ")
    assert lines[10:] == [b""]


def test_json_on_thirty_hosts_parses_line_by_line(fleet: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "-o", "json",
                           "--", "echo ${TEST_VARIANT:-same}")
    assert status == 0
    events = [json.loads(line) for line in out.splitlines()]
    output = {e["host"]: e["data"] for e in events if e["event"] == "output"}
    assert output == {f"127.0.0.{i}": "other\n" if i in (4, 17, 29) else "same\n" for i in range(1, 31)}
    assert sum(e["event"] == "start" for e in events) == 30
    assert sorted(e["host"] for e in events if e["event"] == "exit" and e["ok"]) == sorted(output)
    assert events[-1]["event"] == "summary" and len(events[-1]["ok"]) == 30


def test_outdir_keeps_every_hosts_output(fleet: Path, capsysbinary: pytest.CaptureFixture[bytes],
                                         tmp_path: Path) -> None:
    status, _, _ = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "-o", "gather",
                         "--outdir", str(tmp_path / "out"), "--", "echo ${TEST_VARIANT:-same}; echo e >&2")
    assert status == 0
    for i in range(1, 31):
        out = tmp_path / "out" / f"127.0.0.{i}.out"
        assert out.read_bytes() == (b"other\n" if i in (4, 17, 29) else b"same\n")
        assert out.with_suffix(".err").read_bytes() == b"e\n"
    assert len(list((tmp_path / "out").iterdir())) == 60


def test_failed_only_lists_the_failed_hosts_and_why(fleet: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    with socket.socket() as s:  # a port nobody listens on, just released
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    status, out, err = shoal(capsysbinary, "run", "--inventory", str(fleet), f"{ALL},{closed}", "-n",
                             "--failed-only", "--", 'echo noise; [ -z "$TEST_VARIANT" ]')
    assert status == 255
    assert out == (f"{closed}: unreachable: connection refused\n127.0.0.4: failed (code 1)\n"
                   "127.0.0.17: failed (code 1)\n127.0.0.29: failed (code 1)\n").encode()
    assert err.startswith(f"shoal: 27 ok, 3 failed ({VARIANT}), 1 unreachable ({closed}) in ".encode())


def test_diff_shows_each_distinct_output_against_the_most_common(
        fleet: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "--diff",
                             "--", "echo first; echo ${TEST_VARIANT:-same}; echo last")
    assert status == 0
    assert out == (b"--- 127.0.0.[1-3,5-16,18-28,30] (27)\n+++ 127.0.0.[4,17,29] (3)\n@@ -1,3 +1,3 @@\n"
                   b" first\n-same\n+other\n last\n")
    assert err.startswith(b"shoal: 30 ok, 0 failed, 0 unreachable in ")
    status, out, _ = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "--diff", "--", "echo same")
    assert status == 0 and out == b""  # one output everywhere: nothing differs
    status, _, err = shoal(capsysbinary, "run", "--inventory", str(fleet), ALL, "-n", "--diff", "-o", "json",
                           "--", "true")
    assert status == 2 and b"--diff" in err

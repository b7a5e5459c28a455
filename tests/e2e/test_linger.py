"""Output that outlives the command: a background job holding stdout cannot hold the
request open; after the output linger the agent reports EXIT and ends the leftovers."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.agents import AgentThread
from tests.waiting import wait_for
from tests.programs import SHOAL

LINGER = 0.5
# Generous: the machine is busy; a broken agent would wait an hour, not this long.
DEADLINE = 60.0


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"limits.output_linger": LINGER}


def _exited(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _gone(pid: int) -> bool:
    return wait_for(lambda: _exited(pid), timeout=DEADLINE, what=f"process {pid} to exit")


def _run(agents: AgentThread, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SHOAL, "run", agents.addresses[0], "-n", *args],
                          capture_output=True, timeout=DEADLINE)


def test_background_job_holding_stdout_is_ended_after_the_linger(agents: AgentThread, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    done = _run(agents, "--", f"sleep 3600 & echo $! > {pidfile}; echo main-done")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"main-done\n"
    assert done.stderr == f"shoal: {agents.addresses[0]}: ended 1 leftover process after the command exited\n".encode()
    assert _gone(int(pidfile.read_text()))


def test_json_exit_event_counts_the_leftovers(agents: AgentThread, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    done = _run(agents, "-o", "json", "--",
                f"sleep 3600 & echo $! > {pidfile}; sleep 3600 & echo main-done; echo oops >&2")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    exits = [e for e in events if e["event"] == "exit"]
    assert len(exits) == 1 and exits[0]["leftovers_ended"] == 2 and exits[0]["status"] == 0
    outputs = sorted((e["stream"], e["data"]) for e in events if e["event"] == "output")
    assert outputs == [("stderr", "oops\n"), ("stdout", "main-done\n")]
    assert _gone(int(pidfile.read_text()))


def test_command_without_leftovers_reports_none(agents: AgentThread) -> None:
    done = _run(agents, "-o", "json", "--", "echo hi")
    exits = [e for e in map(json.loads, done.stdout.splitlines()) if e["event"] == "exit"]
    assert exits[0]["leftovers_ended"] is None and done.stderr == b""


def test_linger_clock_stops_while_the_controller_grants_no_window(agents: AgentThread) -> None:
    """Output already in the pipe when the command exits is not lost to a slow controller."""
    from shoal.protocol.messages import Exec, Exit, Started, Stdout, Window
    from tests.rawpeer import RawController

    peer = RawController(agents.addresses[0])
    try:
        peer.handshake()
        peer.conn.send(Exec(1, argv=["head", "-c", "60000", "/dev/zero"], window=4096))  # fits a pipe
        peer.flush()
        got, pid = 0, 0
        while got < 4096:
            event = peer.next_event()
            assert event is not None
            pid = event.pid if isinstance(event, Started) else pid
            got += len(event.data) if isinstance(event, Stdout) else 0
        assert _gone(pid)  # the command has exited; the rest waits in the pipe, unread
        time.sleep(3 * LINGER)  # stalled well past the linger: only this controller's doing
        peer.conn.send(Window(1, bytes=60000))
        peer.flush()
        while not isinstance(event := peer.next_event(), Exit):
            assert event is not None
            got += len(event.data) if isinstance(event, Stdout) else 0
        assert got == 60000 and event.stdout_bytes == 60000 and event.leftovers_ended is None
    finally:
        peer.close()

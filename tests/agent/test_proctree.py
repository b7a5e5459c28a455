"""shoal.agent.proctree on real process trees: nothing a request started may outlive its kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from shoal.agent import proctree
from shoal.agent.proctree import MARKER_ENV
from shoal.agent.sigclean import clean_child_signals
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]


class Launched:
    """One `sh -c` request started the way the agent starts them: own session, marked env."""

    def __init__(self, script: str, scrub_env: bool = False) -> None:
        clean_child_signals()  # as the agent does: under nohup the test would pass SIGHUP ignored on
        self.token = proctree.new_token()
        env = {**os.environ, MARKER_ENV: self.token}
        argv = ["env", "-i", "sh", "-c", script] if scrub_env else ["sh", "-c", script]
        self.popen = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.popen.pid
        self.seen_pids: set[int] = {self.pid}

    def read_until(self, word: str) -> list[str]:
        """Lines printed before `word`: the script says when its children exist."""
        assert self.popen.stdout is not None
        lines = []
        for raw in self.popen.stdout:
            line = raw.decode().strip()
            if line == word:
                return lines
            lines.append(line)
        raise AssertionError(f"script ended before printing {word!r}; got {lines}")

    def read_line(self) -> str:
        assert self.popen.stdout is not None
        return self.popen.stdout.readline().decode().strip()

    def tree_pids(self) -> set[int]:
        pids = {p.pid for p in proctree.find_tree(self.pid, self.token)}
        self.seen_pids |= pids
        return pids

    def cleanup(self) -> None:
        """SIGKILL whatever is left, by means independent of the code under test.

        A SIGKILLed process runs until the kernel has torn it down, which on a
        loaded machine can take a while, and a shell may fork between our scan
        and our signal: so kill and rescan until nothing marked is left.
        """
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: not self._kill_survivors(), timeout=30)
        self.popen.wait()
        assert self.popen.stdout is not None
        self.popen.stdout.close()

    def _kill_survivors(self) -> list[psutil.Process]:
        survivors = alive_procs(marked(self.token) + _existing(self.seen_pids))
        for proc in survivors:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        return survivors


def marked(token: str) -> list[psutil.Process]:
    """Live processes whose environment carries the token, found without proctree."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER_ENV) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _existing(pids: set[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return procs


def alive_procs(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` still running (zombies count as gone: dead, only unreaped)."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def alive(pids: set[int]) -> set[int]:
    """Which of `pids` still run."""
    return {proc.pid for proc in alive_procs(_existing(pids))}


@pytest.fixture
def launch() -> Iterator[Callable[..., Launched]]:
    started: list[Launched] = []

    def start(script: str, scrub_env: bool = False) -> Launched:
        started.append(Launched(script, scrub_env))
        return started[-1]

    try:
        yield start
    finally:
        for request in started:
            request.cleanup()  # fails if a marked process outlives 30 s of SIGKILLs


# -- tokens ------------------------------------------------------------------


def test_tokens_are_unique_and_name_the_agent() -> None:
    tokens = [proctree.new_token() for _ in range(1000)]
    assert len(set(tokens)) == 1000
    assert all(t.startswith(f"{os.getpid()}-") for t in tokens)


# -- finding -----------------------------------------------------------------


def test_find_tree_lists_root_and_background_jobs(launch: Callable[..., Launched]) -> None:
    req = launch("sleep 300 & sleep 300 & echo ready; wait")
    req.read_until("ready")
    children = {p.pid for p in psutil.Process(req.pid).children(recursive=True)}
    assert len(children) == 2
    assert req.tree_pids() == {req.pid} | children
    assert proctree.signal_tree(req.pid, req.token, 0) == 3


def test_find_tree_ignores_other_requests(launch: Callable[..., Launched]) -> None:
    mine = launch("sleep 300 & echo ready; wait")
    other = launch("sleep 300 & echo ready; wait")
    mine.read_until("ready")
    other.read_until("ready")
    assert mine.tree_pids().isdisjoint(other.tree_pids())
    assert other.pid not in mine.tree_pids()


def test_pid_naming_another_request_is_not_trusted(launch: Callable[..., Launched]) -> None:
    # As if our root had been reaped and its pid reused by someone else's process:
    # neither that process, its children nor its group belong to us.
    other = launch("sleep 300 & echo ready; wait")
    other.read_until("ready")
    assert proctree.find_tree(other.pid, proctree.new_token()) == []
    assert proctree.signal_tree(other.pid, proctree.new_token(), signal.SIGKILL) == 0
    assert alive({other.pid}) == {other.pid}


def test_our_own_group_is_never_a_target() -> None:
    for pid in (0, os.getpgrp()):
        assert proctree.signal_tree(pid, proctree.new_token(), 0) == 0


def test_scrubbed_environment_still_found_by_parent_and_group(launch: Callable[..., Launched]) -> None:
    req = launch("sleep 300 & echo ready; wait", scrub_env=True)
    req.read_until("ready")
    assert marked(req.token) == []
    children = {p.pid for p in psutil.Process(req.pid).children(recursive=True)}
    assert req.tree_pids() == {req.pid} | children


def test_finding_nothing_once_the_request_has_exited(launch: Callable[..., Launched]) -> None:
    req = launch("echo ready")
    req.read_until("ready")
    req.popen.wait()
    assert proctree.find_tree(req.pid, req.token) == []
    assert proctree.signal_tree(req.pid, req.token, signal.SIGTERM) == 0


# -- killing -----------------------------------------------------------------


async def test_kill_tree_kills_background_jobs(launch: Callable[..., Launched]) -> None:
    req = launch("sleep 300 & sleep 300 & echo ready; wait")
    req.read_until("ready")
    pids = req.tree_pids()
    assert len(pids) == 3
    await proctree.kill_tree(req.pid, req.token, grace=30)
    assert req.popen.wait() == -signal.SIGTERM
    assert marked(req.token) == []
    assert alive(pids) == set()


async def test_kill_tree_finds_a_grandchild_that_escaped_with_setsid(launch: Callable[..., Launched]) -> None:
    # The subshell starts a new session and exits at once, so the daemon is neither
    # in our process group nor below our root any more.
    req = launch("(setsid sh -c 'echo daemon $$; exec sleep 300' &); echo ready; exec sleep 300")
    lines = req.read_until("ready")
    if not lines:  # the daemon may speak after the parent
        lines = [req.read_line()]
    daemon = int(lines[0].split()[1])
    assert daemon not in {p.pid for p in psutil.Process(req.pid).children(recursive=True)}
    assert os.getpgid(daemon) != req.pid and os.getsid(daemon) != os.getsid(req.pid)
    assert daemon in req.tree_pids()
    await proctree.kill_tree(req.pid, req.token, grace=30)
    assert alive({daemon}) == set()
    assert marked(req.token) == []


async def test_kill_tree_sigkills_what_ignores_sigterm(launch: Callable[..., Launched]) -> None:
    req = launch("trap '' TERM; sleep 300 & echo ready; wait")
    req.read_until("ready")
    pids = req.tree_pids()
    await proctree.kill_tree(req.pid, req.token, grace=0.5)
    assert req.popen.wait() == -signal.SIGKILL
    assert alive(pids) == set()
    assert marked(req.token) == []


async def test_kill_tree_wakes_stopped_processes_to_handle_the_signal(launch: Callable[..., Launched]) -> None:
    # A stopped shell cannot run its TERM trap; without the SIGCONT that follows
    # the signal it would sit out the whole grace period and die of SIGKILL.
    req = launch("trap 'exit 7' TERM; sleep 300 & echo ready; wait")
    req.read_until("ready")
    os.killpg(req.pid, signal.SIGSTOP)
    while psutil.Process(req.pid).status() != psutil.STATUS_STOPPED:
        time.sleep(0.01)
    # The shell must exit 7 from its trap (woken by SIGCONT); a member that still
    # sleeps when the grace ends is SIGKILLed, so a short grace keeps this quick.
    await proctree.kill_tree(req.pid, req.token, grace=5)
    assert req.popen.wait() == 7
    assert marked(req.token) == []


async def test_kill_tree_with_a_custom_first_signal(launch: Callable[..., Launched]) -> None:
    req = launch("echo ready; exec sleep 300")
    req.read_until("ready")
    await proctree.kill_tree(req.pid, req.token, first_signal=signal.SIGHUP, grace=30)
    assert req.popen.wait() == -signal.SIGHUP


async def test_kill_tree_of_nothing_returns_at_once(launch: Callable[..., Launched]) -> None:
    req = launch("echo ready")
    req.read_until("ready")
    req.popen.wait()
    await proctree.kill_tree(req.pid, req.token, grace=3600)


# -- escalating --------------------------------------------------------------


@pytest.mark.parametrize(("ignored", "fatal"), [
    ("", signal.SIGINT),
    ("INT", signal.SIGTERM),
    ("INT TERM", signal.SIGKILL),
])
async def test_escalate_stops_at_the_first_signal_that_works(
        launch: Callable[..., Launched], ignored: str, fatal: signal.Signals) -> None:
    trap = f"trap '' {ignored}; " if ignored else ""
    req = launch(f"{trap}echo ready; exec sleep 300")
    req.read_until("ready")
    await proctree.escalate(req.pid, req.token, grace=0.3)
    assert req.popen.wait() == -fatal
    assert marked(req.token) == []


async def test_escalate_ends_with_sigkill_even_if_not_listed(launch: Callable[..., Launched]) -> None:
    req = launch("trap '' INT; echo ready; exec sleep 300")
    req.read_until("ready")
    await proctree.escalate(req.pid, req.token, signals=(signal.SIGINT,), grace=0.3)
    assert req.popen.wait() == -signal.SIGKILL


# -- subreaper and orphans -----------------------------------------------------

# Runs in its own Python process: being a subreaper lasts for the life of a process
# and must not leak into pytest. It prints what it observed as JSON.
SUBREAPER_SCENARIO = r"""
import json, os, signal, subprocess, time
import psutil
from shoal.agent import proctree

report = {"subreaper": proctree.enable_subreaper()}
known = subprocess.Popen(["sh", "-c", "exit 3"])
outer = subprocess.Popen(["sh", "-c", "(sleep 300 & echo $!)"], stdout=subprocess.PIPE)
daemon = int(outer.stdout.readline())
outer.wait()
outer.stdout.close()
try:
    reaper = proctree.OrphanReaper()
    report["daemon_parent_is_us"] = psutil.Process(daemon).ppid() == os.getpid()
    while psutil.Process(known.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    report["reaped_while_alive"] = reaper.reap({known.pid})
    os.kill(daemon, signal.SIGKILL)
    while psutil.Process(daemon).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    report["reaped_dead"] = reaper.reap({known.pid}) == [daemon]
    report["daemon_gone"] = not psutil.pid_exists(daemon)
    report["reaped_again"] = reaper.reap({known.pid})
    report["known_status"] = known.wait()
finally:
    if psutil.pid_exists(daemon):
        os.kill(daemon, signal.SIGKILL)
        os.waitpid(daemon, 0)
    known.wait()
print(json.dumps(report))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux-only")
def test_subreaper_adopts_and_reaps_orphans_but_not_known_children() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", SUBREAPER_SCENARIO], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "subreaper": True,
        "daemon_parent_is_us": True,
        "reaped_while_alive": [],
        "reaped_dead": True,
        "daemon_gone": True,
        "reaped_again": [],
        "known_status": 3,
    }


def test_enable_subreaper_is_refused_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert proctree.enable_subreaper() is False

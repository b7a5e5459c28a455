"""Helpers for the fault tests: find what a request left running.

A request's processes are recognised by the `SHOAL_REQUEST` marker the agent puts
in every child's environment (agent/proctree.py); the tests read the marker of a
running request from the agent or from the root process, then ask psutil whether
anything carrying it is still alive.
"""

from __future__ import annotations

import psutil

from shoal.agent.commands import CommandRequest
from shoal.agent.proctree import MARKER_ENV
from shoal.agent.server import Agent
from tests.waiting import wait_for

__all__ = ["marked", "marker_of", "tokens_of", "zombie_children"]


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def marked(token: str) -> list[psutil.Process]:
    """Live (non-zombie) processes carrying `token` in their environment."""
    return [p for p in psutil.process_iter() if _alive(p) and _environ(p).get(MARKER_ENV) == token]


def marker_of(pid: int, timeout: float = 10.0) -> str:
    """The request marker of a running command's root process.

    Polled: between fork and exec the child still shows the agent's environment, and
    during exec /proc shows none at all, so a first read can come too early.
    """
    proc = psutil.Process(pid)
    token = wait_for(lambda: _environ(proc).get(MARKER_ENV), timeout=timeout, what="the command's request marker")
    assert isinstance(token, str)
    return token


def tokens_of(agent: Agent) -> list[str]:
    """Markers of the commands the agent is running for its connected controllers."""
    return [req.child.token for s in list(agent.sessions) for req in list(s.requests.values())
            if isinstance(req, CommandRequest)]


def zombie_children() -> list[int]:
    """Pids of this process's children that exited and were never reaped."""
    out = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return out

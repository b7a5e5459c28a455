"""Helpers for the fault tests: find what a request left running, poll with deadlines.

A request's processes are recognised by the `SHOAL_REQUEST` marker the agent puts
in every child's environment (agent/proctree.py); the tests read the marker of a
running request from the agent or from the root process, then ask psutil whether
anything carrying it is still alive.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import psutil

from shoal.agent.commands import CommandRequest
from shoal.agent.proctree import MARKER_ENV
from shoal.agent.server import Agent

__all__ = ["marked", "marker_of", "tokens_of", "poll", "apoll", "zombie_children"]


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


def marker_of(pid: int) -> str:
    """The request marker of a running command's root process."""
    token = _environ(psutil.Process(pid)).get(MARKER_ENV)
    assert token, f"pid {pid} carries no {MARKER_ENV}"
    return token


def tokens_of(agent: Agent) -> list[str]:
    """Markers of the commands the agent is running for its connected controllers."""
    return [req.child.token for s in list(agent.sessions) for req in list(s.requests.values())
            if isinstance(req, CommandRequest)]


def poll(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> object:
    """Wait until `condition()` is truthy and return it; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


async def apoll(condition: Callable[[], object | Awaitable[object]], timeout: float = 5.0,
                interval: float = 0.02) -> object:
    """`poll` for async tests: the event loop keeps running between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        await asyncio.sleep(interval)


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

"""One place that starts background tasks, keeps them referenced and reaps failures.

A bare `asyncio.create_task` whose result nobody awaits can be garbage-collected
mid-flight and its exception is lost; here every task is held in a set and any
exception is logged with its traceback, then handed to an optional callback so
the failure closes only the request or connection that owned the task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

__all__ = ["TaskSet"]

log = logging.getLogger("shoal.tasks")


class TaskSet:
    """Background tasks owned by one object (a connection, a request, the agent)."""

    def __init__(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start `coro` in the background; failures are logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("background task %s failed", task.get_name(), exc_info=exc)
        if self._on_error is not None:
            self._on_error(exc)

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def wait(self, timeout: float | None = None) -> None:
        """Wait for the running tasks (those started meanwhile too)."""
        while self._tasks:
            done, _ = await asyncio.wait(set(self._tasks), timeout=timeout)
            if not done:
                return

    def __len__(self) -> int:
        return len(self._tasks)

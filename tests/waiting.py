"""The one way tests wait: poll a condition until it holds or a deadline passes.

Tests never sleep and hope. Where no event tells them a thing happened (another
process exited, a thread finished, a log line appeared), they poll with these, and
a condition still false at the deadline fails the test naming what was awaited.
The timeout is a guard against hanging on a loaded machine, not a timing claim.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable, TypeVar

__all__ = ["wait_for", "wait_for_async", "TIMEOUT"]

T = TypeVar("T")

# Long enough for a loaded 2-core machine; a condition that holds returns at once.
TIMEOUT = 10.0
# Between checks: short enough not to slow a test, long enough not to spin.
INTERVAL = 0.02


def wait_for(predicate: Callable[[], T], *, timeout: float = TIMEOUT, what: str = "", interval: float = INTERVAL) -> T:
    """Return `predicate()`'s first truthy value; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, timeout, what, value))
        time.sleep(interval)


async def wait_for_async(predicate: Callable[[], T | Awaitable[T]], *, timeout: float = TIMEOUT, what: str = "",
                         interval: float = INTERVAL) -> T:
    """`wait_for` in a coroutine: the event loop runs between checks; `predicate` may be async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(predicate, timeout, what, value))
        await asyncio.sleep(interval)


def _timed_out(predicate: object, timeout: float, what: str, last: object) -> str:
    return f"timed out after {timeout:g} s waiting for {what or _source(predicate)} (last seen: {last!r})"


def _source(predicate: object) -> str:
    """The line that wrote the condition: a lambda's repr names nothing."""
    try:
        return inspect.getsource(predicate).strip()  # type: ignore[arg-type]
    except (OSError, TypeError):
        return repr(predicate)

"""The one bounded fan-out: run a per-host coroutine over many hosts at once.

Every multi-host operation (run, batch, metrics, ping, get, put, bootstrap, the
shell's pool) goes through `fan_out`, so they share one answer to the questions
a fan-out raises: how many at once (a limit, like clush's fanout), in what order
results come back (target order, plus a callback as each finishes), and what
happens on the way out. No task outlives the call: if the caller is cancelled
(Ctrl-C) or one host's work raises (a bug, or an error that concerns every host,
such as an unreadable local file), the others are cancelled and awaited before
the exception propagates, so their `finally` blocks close connections and kill
local processes. A host's ordinary failure must be its result, not an exception:
see `shoal.controller.result.failure_result`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["fan_out"]

T = TypeVar("T")
R = TypeVar("R")


async def fan_out(items: Sequence[T], work: Callable[[T], Awaitable[R]], *,
                  limit: int | asyncio.Semaphore | None = None,
                  on_done: Callable[[R], None] | None = None) -> list[R]:
    """Run `work(item)` for every item, at most `limit` at once; results in item order.

    Args:
        items: the hosts (or anything per host), in the order results are wanted.
        work: one item's coroutine; it should turn that item's failures into its result.
        limit: how many run at once: a count, a semaphore shared with other work
            (the shell's pool), or None when `work` bounds itself.
        on_done: called with each result as it finishes, outside the limit.

    Raises:
        Whatever a `work` raised first, after cancelling and awaiting the rest.
    """
    gate = asyncio.Semaphore(max(1, limit)) if isinstance(limit, int) else limit

    async def one(item: T) -> R:
        if gate is None:
            result = await work(item)
        else:
            async with gate:
                result = await work(item)
        if on_done is not None:
            on_done(result)
        return result

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

"""The one bounded fan-out: run a per-host coroutine over many hosts at once.

Every multi-host operation (run, batch, metrics, ping, get, put, bootstrap, the
shell's pool) goes through `fan_out`, so they share one answer to the questions
a fan-out raises: how many at once (a limit, like clush's fanout; applied per
gateway for relayed hosts, since each gateway does its own connecting), in what order
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

from shoal.controller.targets import Target

__all__ = ["fan_out", "per_gateway", "Limit"]

T = TypeVar("T")
R = TypeVar("R")

# How many run at once: a count, a semaphore shared with other work (the shell's
# pool), one semaphore per item (per_gateway), or None when the work bounds itself.
Limit = int | asyncio.Semaphore | Callable[[T], asyncio.Semaphore] | None


def per_gateway(fanout: int, target_of: Callable[[T], Target]) -> Callable[[T], asyncio.Semaphore]:
    """A limit of `fanout` hosts at once among the direct ones and again behind each gateway.

    A gateway opens its targets' connections itself, concurrently (issue: 1,000 hosts
    behind one gateway must not wait on the controller's direct hosts), so the run's
    fanout bounds each gateway's share, as clush's fanout bounds each gateway's tree.
    """
    gates: dict[str | None, asyncio.Semaphore] = {}

    def gate(item: T) -> asyncio.Semaphore:
        via = target_of(item).via
        key = None if via is None else via.name
        if key not in gates:
            gates[key] = asyncio.Semaphore(max(1, fanout))
        return gates[key]

    return gate


async def fan_out(items: Sequence[T], work: Callable[[T], Awaitable[R]], *,
                  limit: Limit[T] = None,
                  on_done: Callable[[R], None] | None = None) -> list[R]:
    """Run `work(item)` for every item, at most `limit` at once; results in item order.

    Args:
        items: the hosts (or anything per host), in the order results are wanted.
        work: one item's coroutine; it should turn that item's failures into its result.
        limit: how many run at once (see `Limit`).
        on_done: called with each result as it finishes, outside the limit.

    Raises:
        Whatever a `work` raised first, after cancelling and awaiting the rest.
    """
    shared = asyncio.Semaphore(max(1, limit)) if isinstance(limit, int) else limit

    async def one(item: T) -> R:
        gate = shared if shared is None or isinstance(shared, asyncio.Semaphore) else shared(item)
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

"""Ctrl-C during a fleet run: the first cancels everywhere, the second stops waiting.

Like clush and pssh, a first interrupt must not abandon remote processes: it
asks every host to cancel (SIGINT, SIGTERM, SIGKILL) and keeps collecting what
they print. A second one sends kills and returns at once.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Awaitable, Callable, TypeVar

from shoal.controller.term.display import Display

__all__ = ["run_interruptible"]

T = TypeVar("T")


async def run_interruptible(work: Awaitable[T], display: Display, cancel: Callable[[], None],
                            kill: Callable[[], None]) -> tuple[T | None, int]:
    """Await `work` with SIGINT handled; return (its result or None if abandoned, interrupts seen)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            display.message("shoal: interrupted, cancelling on every host (Ctrl-C again to stop waiting)")
            cancel()
        else:
            kill()
            task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await task, interrupts
    except asyncio.CancelledError:
        if interrupts < 2:
            raise
        await asyncio.sleep(0.05)  # let the kill frames reach the sockets
        return None, interrupts
    finally:
        loop.remove_signal_handler(signal.SIGINT)

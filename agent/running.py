"""How many commands run now, and their pids, so shutdown can wait for the last one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shoal.agent.commands import CommandRequest

__all__ = ["RunningCommands"]


class RunningCommands:
    """Commands started and not yet finished, across every session (detached ones too)."""

    def __init__(self) -> None:
        self.count = 0
        # The orphan reaper leaves these alone: they are ours to wait for.
        self.pids: set[int] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def started(self, req: CommandRequest) -> None:
        self.count += 1
        self.pids.add(req.child.pid)
        self._idle.clear()

    def finished(self, req: CommandRequest) -> None:
        self.count -= 1
        self.pids.discard(req.child.pid)
        if not self.count:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the last command to finish; whether none runs now."""
        if self.count and timeout > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                pass
        return not self.count

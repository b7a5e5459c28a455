"""A live progress line for long fleet runs, drawn by Display on a TTY stderr only.

    shoal: 312/500 done, 64 running, 3 failed, 2.4s
    shoal: wave 3/10, 120/500 done, 50 running, 0 failed, 9.1s     (--serial)

Shown when a run has at least PROGRESS_MIN_HOSTS targets and stderr is a terminal
(and not --quiet): below that, every host's output or the summary says as much. It is
redrawn every PROGRESS_INTERVAL seconds, so a run that ends sooner never shows it.
Display wipes it before writing any output line, and it reappears on the next tick,
so it never lands inside output; `close` wipes it before the summary is printed.
"""

from __future__ import annotations

import asyncio
import time

from shoal.controller.term.display import Display
from shoal.controller.term.handler import OutputHandler
from shoal.controller.outcome import Outcome
from shoal.controller.result import Result

__all__ = ["PROGRESS_INTERVAL", "PROGRESS_MIN_HOSTS", "ProgressHandler", "wants_progress"]

PROGRESS_MIN_HOSTS = 10
PROGRESS_INTERVAL = 0.2


def wants_progress(display: Display, host_count: int) -> bool:
    """Tell whether a run over `host_count` hosts should show the progress line."""
    return host_count >= PROGRESS_MIN_HOSTS and display.progress_enabled


class ProgressHandler:
    """Wrap another handler, counting its events and redrawing the progress line.

    Must be created inside the running event loop, which drives the redraws.
    """

    def __init__(self, inner: OutputHandler, display: Display, total: int) -> None:
        self.inner = inner
        self.display = display
        self.total = total
        self.running: set[str] = set()
        self.done = 0
        self.failed = 0
        self.wave = ""  # "wave 3/10, " while a rolling run is under way
        self.began = time.monotonic()
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            PROGRESS_INTERVAL, self._tick)

    def text(self) -> str:
        elapsed = time.monotonic() - self.began
        return (f"shoal: {self.wave}{self.done}/{self.total} done, {len(self.running)} running, "
                f"{self.failed} failed, {elapsed:.1f}s")

    def _tick(self) -> None:
        self.display.progress(self.text())
        self._timer = asyncio.get_running_loop().call_later(PROGRESS_INTERVAL, self._tick)

    def on_start(self, host: str) -> None:
        self.running.add(host)
        self.inner.on_start(host)

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        self.inner.on_output(host, stream, data)

    def on_result(self, result: Result) -> None:
        self.done += 1
        self.running.discard(result.host)
        self.failed += not result.ok and result.outcome != Outcome.SKIPPED
        self.inner.on_result(result)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.display.clear_progress()
        self.inner.close()

"""One progress line for a transfer, aggregated over every host: bytes, rate, ETA.

Hosts report bytes as they go; the line is redrawn at most a few times a second and
only once a transfer has lasted long enough to be worth watching, so copying a small
file to a few hosts prints nothing. Display decides whether stderr is a TTY.
"""

from __future__ import annotations

import time
from typing import Callable

from shoal.controller.term.display import Display

__all__ = ["TransferProgress", "format_bytes", "format_duration"]

# A transfer shorter than this shows no progress line at all.
SHOW_AFTER = 0.5
# Seconds between redraws: smooth enough to read, cheap on a slow terminal.
REDRAW_EVERY = 0.2


class TransferProgress:
    """Counts bytes over all hosts of one put or get and draws them on a TTY.

    Args:
        display: where the line goes (nothing is drawn unless its stderr is a TTY).
        hosts: how many hosts take part, shown at the end of the line.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(self, display: Display, hosts: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.display = display
        self.hosts = hosts
        self.total = 0
        self.done = 0
        self._clock = clock
        self._start = clock()
        self._drawn_at = 0.0
        self.wave = ""  # "wave 2/5  " during a rolling put

    def set_wave(self, number: int, count: int) -> None:
        """A rolling put (--serial, --canary) started wave `number` of `count`."""
        self.wave = f"wave {number}/{count}  " if count > 1 else ""

    def expect(self, n: int) -> None:
        """`n` more bytes are to be moved (a host's file size became known)."""
        self.total += n

    def dropped(self, n: int) -> None:
        """`n` expected bytes will never move (their host failed)."""
        self.total = max(self.done, self.total - n)

    def advance(self, n: int) -> None:
        """`n` bytes moved; redraw if it is time."""
        self.done += n
        now = self._clock()
        if now - self._start >= SHOW_AFTER and now - self._drawn_at >= REDRAW_EVERY:
            self._drawn_at = now
            self.display.progress(self.text(now))

    def text(self, now: float | None = None) -> str:
        """The line: done / total, percent, rate, ETA and host count."""
        elapsed = max(1e-6, (self._clock() if now is None else now) - self._start)
        rate = self.done / elapsed
        percent = 100 * self.done // self.total if self.total else 100
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "--:--"
        hosts = f"{self.hosts} host{'s' if self.hosts != 1 else ''}"
        return (f"{self.wave}{format_bytes(self.done)} / {format_bytes(self.total)} {percent:3d}%  "
                f"{format_bytes(rate)}/s  ETA {eta}  {hosts}")

    def close(self) -> None:
        """Wipe the line before the summary is printed."""
        self.display.clear_progress()


def format_bytes(n: float) -> str:
    """Binary units with one decimal: 512 B, 1.5 KiB, 300.0 MiB."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def format_duration(seconds: float) -> str:
    """m:ss, or h:mm:ss past an hour."""
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

"""The local terminal while a remote pty runs (`--pty`, `shoal login`): raw keys, size, restore.

In raw mode every key goes to the remote terminal as typed (Ctrl-C included: it
interrupts the remote program, as under ssh), and the remote line discipline
does the echoing. The saved modes come back on every way out: a normal end, an
exception, Ctrl-C before raw mode took effect, and SIGTERM or SIGHUP, which are
turned into SystemExit for the duration so the `finally` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["is_terminal", "raw_terminal", "terminal_size", "on_resize"]

# Signals that would end shoal without running `finally` blocks.
_FATAL = (signal.SIGTERM, signal.SIGHUP)


def is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def terminal_size(*fds: int) -> tuple[int, int]:
    """(rows, cols) of the first of `fds` that is a terminal; (0, 0) when none is."""
    for fd in fds:
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        return size.lines, size.columns
    return 0, 0


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put terminal `fd` in raw mode for the block; restore its modes however it ends."""
    import termios  # imported here: `shoal run` loads this module, only --pty on a terminal needs them
    import tty

    saved = termios.tcgetattr(fd)
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in _FATAL}
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def on_resize(callback: Callable[[int, int], None], *fds: int) -> Iterator[None]:
    """Call `callback(rows, cols)` on the running loop whenever the window changes size."""
    loop = asyncio.get_running_loop()
    fds = fds or (sys.stdin.fileno(),)
    loop.add_signal_handler(signal.SIGWINCH, lambda: callback(*terminal_size(*fds)))
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGWINCH)

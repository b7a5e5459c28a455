"""The only writer to the terminal: output bytes, user messages, colour, progress.

Everything a user sees goes through one Display so colour rules (TTY, NO_COLOR,
TERM=dumb), verbosity and the live progress line are decided in one place, and
a progress line is always wiped before an output line is written.

Messages, errors and the progress line carry host names and agents' error text,
so they are escaped here (controller/escape.py) and cannot drive the terminal.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from shoal.controller.escape import escape_text

__all__ = ["Display"]

# Readable on dark and light backgrounds; bold variants double the palette.
_PALETTE = ("32", "33", "34", "35", "36", "1;32", "1;33", "1;34", "1;35", "1;36", "31", "1;31")


def _wants_color(stream: BinaryIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set and non-empty (no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


class Display:
    """Terminal output for the CLI.

    Args:
        stdout, stderr: binary streams (default: the process's).
        color: force colour on or off; None decides from TTY and NO_COLOR.
        verbosity: 0 quiet (errors only), 1 normal, 2 verbose.
    """

    def __init__(self, stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
                 color: bool | None = None, verbosity: int = 1) -> None:
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr.buffer
        self.color = _wants_color(self.stdout) if color is None else color
        self.err_color = _wants_color(self.stderr) if color is None else color
        self.verbosity = verbosity
        self._progress_shown = False
        try:
            self.stderr_tty = os.isatty(self.stderr.fileno())
        except (AttributeError, OSError, ValueError):
            self.stderr_tty = False
        try:
            self.stdout_tty = os.isatty(self.stdout.fileno())
        except (AttributeError, OSError, ValueError):
            self.stdout_tty = False

    # -- raw bytes -----------------------------------------------------------

    def out(self, data: bytes) -> None:
        """Write output bytes to stdout, below any progress line."""
        self.clear_progress()
        self.stdout.write(data)
        self.stdout.flush()

    def err(self, data: bytes) -> None:
        self.clear_progress()
        self.stderr.write(data)
        self.stderr.flush()

    # -- text ----------------------------------------------------------------

    def print(self, text: str = "", style: str | None = None) -> None:
        """One line on stdout (tables, listings), escaped whole, then painted in `style`.

        A newline inside is escaped too: a host's reason cannot add a line of its own.
        """
        shown = escape_text(text)
        if style is not None:
            shown = self.paint(shown, style)
        self.out(shown.encode("utf-8", "replace") + b"\n")

    def message(self, text: str) -> None:
        """Informational lines on stderr, hidden by --quiet; each line escaped on its own."""
        if self.verbosity >= 1:
            shown = "\n".join(escape_text(line) for line in text.split("\n"))
            self.err(shown.encode("utf-8", "replace") + b"\n")

    def debug(self, text: str) -> None:
        if self.verbosity >= 2:
            self.err(b"shoal: " + escape_text(text).encode("utf-8", "replace") + b"\n")

    def error(self, text: str) -> None:
        """One line naming what was wrong, on stderr, always shown."""
        prefix = self.paint("shoal:", "1;31", err=True)
        self.err(f"{prefix} {escape_text(text)}\n".encode("utf-8", "replace"))

    def warning(self, text: str) -> None:
        prefix = self.paint("shoal: warning:", "1;33", err=True)
        self.err(f"{prefix} {escape_text(text)}\n".encode("utf-8", "replace"))

    # -- colour --------------------------------------------------------------

    def paint(self, text: str, code: str, err: bool = False) -> str:
        on = self.err_color if err else self.color
        return f"\x1b[{code}m{text}\x1b[0m" if on else text

    @staticmethod
    def host_color(host: str) -> str:
        """A colour that stays the same for a host across runs."""
        import zlib  # colour only

        return _PALETTE[zlib.crc32(host.encode()) % len(_PALETTE)]

    # -- progress ------------------------------------------------------------

    @property
    def progress_enabled(self) -> bool:
        return self.stderr_tty and self.verbosity >= 1

    def progress(self, text: str) -> None:
        """Redraw the one-line progress indicator on a TTY stderr."""
        if not self.progress_enabled:
            return
        self.stderr.write(b"\r\x1b[K" + escape_text(text).encode("utf-8", "replace"))
        self.stderr.flush()
        self._progress_shown = True

    def clear_progress(self) -> None:
        if self._progress_shown:
            self._progress_shown = False
            self.stderr.write(b"\r\x1b[K")
            self.stderr.flush()

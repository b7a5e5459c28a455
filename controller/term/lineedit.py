"""The shell's line editing: Tab completion and a history file kept across sessions.

Everything here does nothing when Python has no readline; the shell then reads
plain lines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from shoal.controller.term.display import Display

__all__ = ["LineEditor", "history_path", "HISTORY_LENGTH"]

# Lines kept in the history file: months of typing, still read in milliseconds.
HISTORY_LENGTH = 5000


def history_path() -> Path:
    """Where the history lives: $XDG_STATE_HOME/shoal/history, else ~/.local/state/shoal/history."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "shoal" / "history"


class LineEditor:
    """readline set up for the shell: `commands` complete at the start of a line, `hosts()` elsewhere."""

    def __init__(self, display: Display, commands: Iterable[str], hosts: Callable[[], Iterable[str]]) -> None:
        self.display = display
        self._commands = list(commands)
        self._hosts = hosts
        self._history_start = 0

    def setup(self) -> None:
        """Line editing, Tab completion and history, when readline is available."""
        try:
            import readline
        except ImportError:
            return
        readline.set_completer_delims(" \t\n,")
        readline.set_completer(self._completer())
        readline.parse_and_bind("tab: complete")
        readline.set_history_length(HISTORY_LENGTH)
        path = history_path()
        try:
            readline.read_history_file(path)
        except (FileNotFoundError, PermissionError):
            pass
        except OSError as exc:
            self.display.warning(f"cannot read history {path}: {exc.strerror or exc}")
        self._history_start = readline.get_current_history_length()

    def _completer(self) -> Callable[[str, int], str | None]:
        """Complete `:` commands at the start of the line, host names elsewhere."""
        import readline

        def complete(text: str, state: int) -> str | None:
            at_start = not readline.get_line_buffer()[:readline.get_begidx()].strip()
            pool = self._commands if at_start and text.startswith(":") else list(self._hosts())
            matches = [w for w in pool if w.startswith(text)]
            return matches[state] + " " if state < len(matches) else None

        return complete

    def save_history(self) -> None:
        """Append this session's lines, then trim, so parallel sessions keep theirs."""
        try:
            import readline
        except ImportError:
            return
        new = readline.get_current_history_length() - self._history_start
        if new <= 0:
            return
        path = history_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                path.touch(mode=0o600)
            readline.append_history_file(new, path)  # trims the file to HISTORY_LENGTH too
        except OSError as exc:
            self.display.warning(f"cannot save history {path}: {exc.strerror or exc}")

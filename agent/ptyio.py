"""Pseudo-terminals for commands that need one (issue 17, `--pty`).

The child gets the slave side as stdin, stdout and stderr, in a new session
whose controlling terminal it becomes, so job control works and the kernel
sends SIGWINCH to its foreground process group when the size changes. The agent
keeps the master: output comes from it (stdout and stderr merged, as on any
terminal), stdin goes to it, and its end is the terminal's EOF character.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios

__all__ = ["DEFAULT_SIZE", "EOF_BYTES", "open_pty", "set_size", "take_controlling_tty"]

# Rows and columns when the controller sends none (it is not on a terminal).
DEFAULT_SIZE = (24, 80)
# ^D ends input only at the start of a line; after a partial line the first one
# hands that line to the reader and the second ends the input.
EOF_BYTES = b"\x04"


def open_pty(rows: int, cols: int) -> tuple[int, int]:
    """A new (master, slave) pair, neither inherited, the slave set to `rows` x `cols`."""
    master, slave = os.openpty()
    set_size(slave, rows, cols)
    return master, slave


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size; a zero takes the default for that dimension."""
    rows = rows or DEFAULT_SIZE[0]
    cols = cols or DEFAULT_SIZE[1]
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def take_controlling_tty() -> None:
    """In the child, after setsid: make stdin (the slave) its controlling terminal.

    Runs as subprocess's preexec_fn, between fork and exec. It calls one ioctl on
    modules already imported, takes no lock and allocates next to nothing, which is
    what keeps a preexec_fn safe in a process with threads.
    """
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)

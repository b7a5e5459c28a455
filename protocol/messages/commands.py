"""A command request: EXEC and what the controller sends into it, the agent's
STARTED, output and EXIT back.
"""

from __future__ import annotations

from shoal.protocol.errors import LocalProtocolError
from shoal.protocol.messageclass import field, message
from shoal.protocol.messages.core import Message, MessageType, check_timeout_and_window

__all__ = ["NODE_ENV", "Exec", "Stdin", "StdinEof", "Signal", "Cancel", "Window", "Resize", "Started",
           "Stdout", "Stderr", "Exit"]


# EXEC env names the controller sets to say which of the targets this is (as pssh's
# PSSH_HOST, PSSH_NODENUM, PSSH_NUMNODES). They cannot choose code, so every key may pass them.
NODE_ENV = ("SHOAL_HOST", "SHOAL_NODENUM", "SHOAL_NUMNODES")


@message
class Exec(Message):
    """Run a command: exactly one of `argv` (no shell) or `shell` (/bin/sh -c)."""

    TYPE = MessageType.EXEC
    argv: list[str] | None = None
    shell: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    stdin: bool = False
    window: int = 0
    detach: bool = False
    kill_grace: float | None = None
    # Issue 17: run as `user`, on a pseudo-terminal of `rows` x `cols`. A field the
    # agent must honour is also named in `requires`; an agent that does not know a
    # name listed there refuses the request (`unsupported`) rather than run it
    # without (shoal.protocol.fields.EXEC_FEATURES).
    user: str | None = None
    pty: bool = False
    rows: int = 0
    cols: int = 0
    requires: list[str] = field(default_factory=list)
    idle_timeout: float | None = None  # feature "idle_timeout"; range in shoal.protocol.fields

    def _validate(self) -> None:
        if (self.argv is None) == (self.shell is None):
            raise LocalProtocolError("exec needs exactly one of argv and shell")
        check_timeout_and_window(self.timeout, self.window)


@message
class Stdin(Message):
    """Bytes for the command's standard input."""

    TYPE = MessageType.STDIN
    RAW = True
    data: bytes = b""


@message
class StdinEof(Message):
    """Close the command's standard input."""

    TYPE = MessageType.STDIN_EOF


@message
class Signal(Message):
    """Deliver one signal (by number) to the command's process group."""

    TYPE = MessageType.SIGNAL
    signal: int = 15

    def _validate(self) -> None:
        if not 1 <= self.signal <= 64:
            raise LocalProtocolError(f"bad signal number {self.signal!r}")


@message
class Cancel(Message):
    """Stop the command: SIGINT, then SIGTERM, then SIGKILL, `grace` apart."""

    TYPE = MessageType.CANCEL
    grace: float | None = None


@message
class Window(Message):
    """Grant the peer `bytes` more of data-carrying frames for this request."""

    TYPE = MessageType.WINDOW
    bytes: int = 0

    def _validate(self) -> None:
        if self.bytes <= 0:
            raise LocalProtocolError(f"window increment must be positive, not {self.bytes!r}")


@message
class Resize(Message):
    """The controller's terminal changed size: apply it to the request's pty."""

    TYPE = MessageType.RESIZE
    rows: int = 0
    cols: int = 0

    def _validate(self) -> None:
        if not (1 <= self.rows <= 0xFFFF and 1 <= self.cols <= 0xFFFF):
            raise LocalProtocolError(f"bad window size {self.rows!r}x{self.cols!r}")


@message
class Started(Message):
    """The command is running; `stdin_window` bytes of stdin may be sent."""

    TYPE = MessageType.STARTED
    pid: int = 0
    stdin_window: int = 0


@message
class Stdout(Message):
    """Bytes the command wrote to standard output."""

    TYPE = MessageType.STDOUT
    RAW = True
    data: bytes = b""


@message
class Stderr(Message):
    """Bytes the command wrote to standard error."""

    TYPE = MessageType.STDERR
    RAW = True
    data: bytes = b""


@message
class Exit(Message):
    """Last frame of a request: how it ended, after all of its output.

    `status` follows the shell convention (the exit code, or 128+signal).
    `leftovers_ended` counts processes the command left holding its output that the
    agent ended after the output linger; None when there were none.
    """

    TYPE = MessageType.EXIT
    status: int = 0
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    duration: float = 0.0
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_file: str | None = None
    leftovers_ended: int | None = None
    idle_timed_out: bool = False  # feature "idle_timeout": ended by EXEC's idle_timeout

    def _validate(self) -> None:
        if not 0 <= self.status <= 255:
            raise LocalProtocolError(f"bad status {self.status!r} (an exit status is 0..255)")

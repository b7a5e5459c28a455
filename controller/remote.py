"""A command on one agent: what to run (`Command`) and its process-like handle.

`RemoteProcess` is one request's channel, asyncssh's SSHClientProcess in spirit:
stdin writer, output queue, `wait()` for the `Result`. It drives the request state
machine (`shoal.protocol.request`) for every message it sends or receives; the
connection it rides on is `shoal.controller.client.AgentClient`.
"""

from __future__ import annotations

import asyncio
import signal as signals
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, AsyncIterator, Callable

from shoal.protocol.connection import Role
from shoal.protocol.messages import (
    Cancel,
    Error,
    Exit,
    NODE_ENV,
    Message,
    MessageType,
    JobStarted,
    Resize,
    Signal,
    Started,
    Stderr,
    Stdin,
    StdinEof,
    Stdout,
    Window,
)
from shoal.protocol.request import RequestChannel

from shoal.controller.outcome import Outcome
from shoal.controller.result import UNREACHABLE, Result


if TYPE_CHECKING:
    from shoal.controller.client import AgentClient

__all__ = ["Command", "OutputEvent", "RemoteProcess", "Running", "result_from_exit"]


@dataclass(frozen=True, slots=True)
class Command:
    """What to run: `shell` (a /bin/sh -c string) or `argv` (no shell)."""

    shell: str | None = None
    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    stdin: bool = False
    detach: bool = False
    kill_grace: float | None = None
    idle_timeout: float | None = None  # end it after this many seconds without output
    attach: str | None = None  # follow this job's output (JOB_ATTACH) instead of running anything
    user: str | None = None  # run as this user (the agent must be root, the key allowed)
    pty: bool = False  # on a pseudo-terminal: stdout and stderr merged
    rows: int = 0  # its window size (0: the agent's default, 24x80)
    cols: int = 0

    def describe(self) -> str:
        if self.attach is not None:
            return f"job {self.attach}"
        return self.shell if self.shell is not None else " ".join(self.argv or [])

    def for_node(self, host: str, index: int, count: int) -> Command:
        """This command as target `index` (0-based) of `count` runs it: SHOAL_HOST and friends set."""
        node = dict(zip(NODE_ENV, (host, str(index), str(count))))
        return replace(self, env={**self.env, **node})


@dataclass(frozen=True, slots=True)
class OutputEvent:
    stream: str  # "stdout" | "stderr"
    data: bytes


class RemoteProcess:
    """A command running on one agent.

    Iterate it (`async for event in proc`) for its output in order; the exit comes
    after all output, from `wait()`. `write()`/`close_stdin()` feed its stdin.
    """

    def __init__(self, client: AgentClient, request_id: int, timeout: float | None = None,
                 idle_timeout: float | None = None) -> None:
        self.client = client
        self.timeout = timeout  # the command's own limits, named when one is reached
        self.idle_timeout = idle_timeout
        self.host = client.name
        self.request_id = request_id
        self.pid: int | None = None
        # The request's state and both windows, the same machine the agent keeps.
        self.channel = RequestChannel(Role.CONTROLLER, request_id)
        self._events: deque[OutputEvent] = deque()
        self._result: Result | None = None
        self._changed = asyncio.Event()
        self._started = asyncio.get_running_loop().create_future()
        self._stdin_ready = asyncio.Event()
        self._pending_size: tuple[int, int] | None = None  # a RESIZE asked for before STARTED

    def _send(self, msg: Message) -> None:
        self.channel.send(msg)
        self.client.send(msg)

    # -- from the connection -------------------------------------------------

    def receive(self, msg: Message) -> None:
        if not self.client.step(self.channel, msg):  # out of order, or past the output window
            return
        if isinstance(msg, (Stdout, Stderr)):
            self._events.append(OutputEvent("stdout" if isinstance(msg, Stdout) else "stderr", msg.data))
        elif isinstance(msg, Started):
            self.pid = msg.pid
            self._stdin_credit_changed()
            if self._pending_size is not None:
                rows, cols = self._pending_size
                self._pending_size = None
                self.resize(rows, cols)
            if not self._started.done():
                self._started.set_result(None)
        elif isinstance(msg, JobStarted):  # a detached command runs as a job: the request ends here
            self.pid = msg.pid
            self._finish(Result(self.host, 0, job=msg.job))
        elif isinstance(msg, Window):
            self._stdin_credit_changed()
        elif isinstance(msg, Exit):
            self._finish(result_from_exit(self.host, msg, self.timeout, self.idle_timeout))
        elif isinstance(msg, Error):
            status = msg.status if msg.status is not None else 1
            self._finish(Result(self.host, status, error=msg.message, error_code=msg.code))
        self._changed.set()

    def _finish(self, result: Result) -> None:
        if self._result is None:
            self._result = result
        self.client.requests.pop(self.request_id, None)
        if not self._started.done():
            self._started.set_result(None)
        self._stdin_ready.set()

    def lost(self, reason: str, code: str = Outcome.CONNECTION_LOST) -> None:
        self.channel.connection_lost()
        self._finish(Result(self.host, UNREACHABLE, error=reason, error_code=code))
        self._changed.set()

    # -- output --------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[OutputEvent]:
        return self

    async def __anext__(self) -> OutputEvent:
        while not self._events:
            if self._result is not None:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        event = self._events.popleft()
        grant = self.channel.output_consumed(len(event.data))  # in batches of half a window
        if grant:
            self._send(Window(self.request_id, bytes=grant))
        return event

    async def wait(self) -> Result:
        """Wait for the end, discarding output not yet read."""
        async for _ in self:
            pass
        assert self._result is not None
        return self._result

    @property
    def result(self) -> Result | None:
        return self._result

    # -- input and control ---------------------------------------------------

    def _stdin_credit_changed(self) -> None:
        if self.channel.stdin_credit > 0:
            self._stdin_ready.set()

    async def write(self, data: bytes) -> None:
        """Send stdin bytes, waiting for the agent's window; dropped once ended."""
        view = memoryview(data)
        ch = self.channel
        while view and self._result is None:
            while ch.stdin_credit <= 0 and self._result is None:
                self._stdin_ready.clear()
                await self._stdin_ready.wait()
            if self._result is not None:
                return
            n = min(len(view), ch.stdin_credit, self.client.max_chunk)
            self._send(Stdin(self.request_id, bytes(view[:n])))
            view = view[n:]

    def close_stdin(self) -> None:
        if self.channel.can_send(MessageType.STDIN_EOF):
            self._send(StdinEof(self.request_id))

    def signal(self, sig: int) -> None:
        if self.channel.can_send(MessageType.SIGNAL):
            self._send(Signal(self.request_id, signal=sig))

    def cancel(self, grace: float | None = None) -> None:
        """Ask the agent to stop the command: SIGINT, SIGTERM, SIGKILL."""
        if self.channel.can_send(MessageType.CANCEL):
            self._send(Cancel(self.request_id, grace=grace))

    def kill(self) -> None:
        self.signal(signals.SIGKILL)

    def resize(self, rows: int, cols: int) -> None:
        """Tell the agent the terminal is now `rows` x `cols` (a `pty` command only)."""
        if self._result is None and rows > 0 and cols > 0:
            size = (min(rows, 0xFFFF), min(cols, 0xFFFF))
            if self.channel.can_send(MessageType.RESIZE):
                self._send(Resize(self.request_id, rows=size[0], cols=size[1]))
            else:  # not STARTED yet: there is no terminal to size; send it once there is
                self._pending_size = size


def required_features(command: Command) -> list[str]:
    """EXEC fields the agent must honour or refuse (PROTOCOL.md, EXEC `requires`)."""
    return [name for name, used in (("user", command.user is not None), ("pty", command.pty)) if used]


def result_from_exit(host: str, msg: Exit, timeout: float | None, idle_timeout: float | None) -> Result:
    """The Result an EXIT makes; a timeout's limit is named when this end knows it (an attach does not)."""
    error: str | None = None
    code: str | None = None
    limit: float | None = None
    if msg.timed_out:
        error, code, limit = (f"timed out after {timeout:g}s" if timeout else "timed out"), Outcome.TIMEOUT, timeout
    elif msg.idle_timed_out:
        error = f"idle timeout: no output for {idle_timeout:g}s" if idle_timeout else "idle timeout: no output for too long"
        code, limit = Outcome.IDLE_TIMEOUT, idle_timeout
    return Result(
        host, UNREACHABLE if code else msg.status, code=msg.code, signal=msg.signal, timed_out=msg.timed_out,
        cancelled=msg.cancelled, duration=msg.duration, stdout_bytes=msg.stdout_bytes,
        stderr_bytes=msg.stderr_bytes, output_file=msg.output_file, leftovers_ended=msg.leftovers_ended,
        error=error, error_code=code, limit=limit,
    )


class Running:
    """The commands a multi-host operation has running, and Ctrl-C's word on them.

    A cancel or kill reaches every command already started and, because a start is
    a round trip, also one whose EXEC was in flight when it was called: `add` applies
    it as soon as that command is known. Once stopping, no new host should start.
    Fleet, batch and the shell's pool all keep their commands here.
    """

    def __init__(self) -> None:
        self._procs: dict[str, RemoteProcess] = {}
        self._stop: Callable[[RemoteProcess], None] | None = None

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    def add(self, host: str, proc: RemoteProcess) -> None:
        self._procs[host] = proc
        if self._stop is not None:
            self._stop(proc)

    def remove(self, host: str) -> None:
        self._procs.pop(host, None)

    def values(self) -> list[RemoteProcess]:
        return list(self._procs.values())

    def reset(self) -> None:
        """Forget a stop: the shell's next command starts anew."""
        self._stop = None

    def cancel(self, grace: float | None = None) -> None:
        """SIGINT, then SIGTERM and SIGKILL after `grace`, on every command, running or starting."""
        self._stop = lambda proc: proc.cancel(grace)
        for proc in self.values():
            proc.cancel(grace)

    def kill(self) -> None:
        """SIGKILL every command's process tree, running or starting."""
        self._stop = RemoteProcess.kill
        for proc in self.values():
            proc.kill()

"""One command request on the agent: its child, its windows, its deadline.

Output flow control is per request. The controller grants `window` bytes in its
EXEC and more with WINDOW frames as it consumes; we never send past the grant,
and when it is used up we stop reading the child's pipes so the child blocks.
Stdin works the other way round: we advertise `stdin_window` in STARTED and grant
more as bytes reach the child's pipe. The states and both windows are kept by the
request's `RequestChannel` (shoal.protocol.request), the same one the controller keeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shoal.protocol.connection import Role
from shoal.protocol.messages import Exit, MessageType, Started, Window
from shoal.protocol.request import RequestChannel

from shoal.agent import proctree
from shoal.agent.process import STDERR, STDOUT, Child, ChildResult
from shoal.agent.runas import RunAs
from shoal.protocol.defaults import DATA_CHUNK

if TYPE_CHECKING:
    from shoal.agent.session import AgentSession

__all__ = ["CommandRequest", "SHELL"]

SHELL = "/bin/sh"


class CommandRequest:
    """A running EXEC: relays output under the window, reports the exit last."""

    def __init__(self, session: AgentSession, request_id: int, argv: list[str], env: dict[str, str],
                 cwd: str | None, want_stdin: bool, window: int, timeout: float | None,
                 grace: float, *, idle_timeout: float | None = None,
                 run_as: RunAs | None = None, pty_size: tuple[int, int] | None = None,
                 user: str | None) -> None:
        self.session = session
        self.request_id = request_id
        self.argv = argv
        self.cwd = cwd
        # request state machine: EXEC received (its window), STARTED sent below
        self.channel = RequestChannel(Role.AGENT, request_id)
        self.channel.receive_data(MessageType.EXEC, window)
        self.grace = grace
        self.timed_out = False
        self.cancelled = False
        self.abandoned = False
        self.bytes = {1: 0, 2: 0}
        self.stdin_bytes = 0
        self.started = time.time()
        self.leftovers_ended: int | None = None
        self.user = user  # the name its audit records carry (the EXEC's), looked up once
        self.child = Child(argv, env, cwd, want_stdin, self._on_data, self._on_done,
                           linger=session.limits.output_linger, run_as=run_as, pty_size=pty_size)
        self.child.on_stdin_drained = self._on_stdin_drained
        self._max_read = min(DATA_CHUNK, session.conn.peer_max_frame)
        self._update_read_size()
        self._timer = asyncio.get_running_loop().call_later(timeout, self._on_timeout) if timeout else None
        self.idle_timed_out = False
        self._idle = IdleClock(idle_timeout, self.child, self._on_idle) if idle_timeout else None
        started = Started(request_id, pid=self.child.pid, stdin_window=session.limits.stdin_window if want_stdin else 0)
        self.channel.send(started)
        session.send(started)

    @property
    def credit(self) -> int:
        """Output bytes the controller still accepts (the channel's output window)."""
        return self.channel.output_credit

    # -- output --------------------------------------------------------------

    def _on_data(self, stream: int, data: bytes) -> None:
        self.bytes[stream] += len(data)
        if self._idle is not None:
            self._idle.heard()
        if self.abandoned:
            return
        kind = MessageType.STDOUT if stream == STDOUT else MessageType.STDERR
        self.channel.send_data(kind, len(data))
        self.session.send_data(kind, self.request_id, data)
        self._update_read_size()

    def notice(self, text: str) -> None:
        """A line from the agent itself to the command's stderr (its terminal with a pty)."""
        data = text.encode("utf-8", "replace")[:max(self.credit, 0)]  # within the output window
        if data:
            self._on_data(STDOUT if self.child.is_pty else STDERR, data)

    def _update_read_size(self) -> None:
        if self.credit <= 0:
            self.child.pause_reading()
        else:
            self.child.max_read = min(self._max_read, self.credit)
            if not self.session.writing_paused:
                self.child.resume_reading()

    def abandon(self) -> None:
        """The controller is gone: drop output from now on, never pause.

        Unread output would otherwise keep the pipes from reaching EOF after the
        tree is killed, and the request (its fds, its slot) would never end.
        """
        self.abandoned = True
        self.child.max_read = self._max_read
        self.child.resume_reading()

    def grant(self, increment: int) -> None:
        """The controller consumed output: it may have this much more (0: re-check only)."""
        if increment:
            self.channel.receive_data(MessageType.WINDOW, increment)
        self._update_read_size()

    # -- stdin ---------------------------------------------------------------

    def stdin(self, data: bytes) -> None:
        """Queue stdin. Raises RemoteProtocolError (`window_exceeded`) when the
        controller overran the window it was given."""
        self.stdin_bytes += len(data)
        self.channel.receive_data(MessageType.STDIN, len(data))
        self.child.write_stdin(data)

    def _on_stdin_drained(self, n: int) -> None:
        if not self.session.closed:
            window = Window(self.request_id, bytes=n)
            self.channel.send(window)
            self.session.send(window)

    # -- ending --------------------------------------------------------------

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.session.log.info("command timed out, killing its tree", req=self.request_id)
        self.kill(signal.SIGTERM)

    def _on_idle(self) -> None:
        self.idle_timed_out = True
        self.session.log.info("command printed nothing for its idle timeout, killing its tree", req=self.request_id)
        self.kill(signal.SIGTERM)

    def kill(self, first: int = signal.SIGTERM, grace: float | None = None) -> None:
        """Signal the whole tree, SIGKILL what is left after the grace period."""
        g = self.grace if grace is None else grace
        self.session.agent.tasks.spawn(
            proctree.kill_tree(self.child.pid, self.child.token, first, g), name=f"kill-{self.child.pid}")

    def cancel(self, grace: float | None) -> None:
        """SIGINT, then SIGTERM, then SIGKILL, `grace` seconds apart."""
        self.cancelled = True
        g = self.grace if grace is None else grace
        self.session.agent.tasks.spawn(
            proctree.escalate(self.child.pid, self.child.token, grace=g), name=f"cancel-{self.child.pid}")

    def _on_done(self, result: ChildResult) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._idle is not None:
            self._idle.stop()
        if self.child.output_cut:
            self._end_leftovers()
        self.session.command_done(self, result)
        self.child.close()

    def _end_leftovers(self) -> None:
        """The main process is gone but its output outlived the linger: end the rest.

        They are counted for the EXIT first, then killed like a cancelled command
        (SIGTERM, SIGKILL `grace` later); the EXIT does not wait for them to die.
        """
        count = len(proctree.find_tree(self.child.pid, self.child.token))
        self.session.log.info("output outlived the command by %gs: ending %d leftover processes",
                              self.session.limits.output_linger, count, req=self.request_id)
        if count:
            self.leftovers_ended = count
            self.kill(signal.SIGTERM)

    def exit_message(self, result: ChildResult) -> Exit:
        """The EXIT to send now; the request's channel is DONE after it."""
        exit_ = Exit(
            self.request_id, status=result.status, code=result.code, signal=result.signal,
            timed_out=self.timed_out, cancelled=self.cancelled, duration=round(result.duration, 6),
            stdout_bytes=self.bytes[1], stderr_bytes=self.bytes[2],
            leftovers_ended=self.leftovers_ended, idle_timed_out=self.idle_timed_out,
        )
        self.channel.send(exit_)
        return exit_


class IdleClock:
    """Fire `on_idle` once the child has printed nothing for `seconds` while being read.

    The clock counts only while we read the pipes: when flow control has paused
    reading (the window or the socket is full), the child may be blocked writing,
    which is not silence, so a check that finds reading paused starts over.
    """

    def __init__(self, seconds: float, child: Child, on_idle: Callable[[], None]) -> None:
        self.seconds = seconds
        self.child = child
        self.on_idle = on_idle
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(seconds, self._check)

    def heard(self) -> None:
        """Output arrived: the silence starts again now."""
        self._last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if self.child.reading_paused:
            self._last = now
        self._last = max(self._last, self.child.resumed_at)
        left = self._last + self.seconds - now
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
        else:
            self._handle = None
            self.on_idle()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def build_argv(argv: list[str] | None, shell: str | None) -> list[str]:
    """The child's argv: as given, or the shell string under /bin/sh -c."""
    if shell is not None:
        return [SHELL, "-c", shell]
    assert argv is not None
    return [os.fsdecode(os.fsencode(a)) for a in argv]

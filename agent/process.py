"""A child process driven from the event loop: large pipe reads, pausable, pidfd exit.

We do not use asyncio's subprocess transports: they read 256 KiB at a time, rely
on a child watcher thread per process in 3.11, and cannot grow the pipe buffer.
Here each request gets its own pipes enlarged with F_SETPIPE_SZ, reads of up to
`DATA_CHUNK` bytes straight into a bytes object, and a pidfd that becomes readable
when the child exits. Pausing a stream removes its reader, so a child writing
faster than the controller consumes blocks on its full pipe: backpressure with
no buffering on our side.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import os
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from shoal.protocol.defaults import DATA_CHUNK
from shoal.protocol.errors import ErrorCode, RemoteCommandError

from shoal.agent import proctree, ptyio
from shoal.agent.runas import RunAs

__all__ = ["PIPE_SIZE", "ChildResult", "Child", "spawn_error"]

# One read moves up to DATA_CHUNK of output; with a pipe as large the child rarely
# blocks between our reads, and per-byte Python work is amortised over 1 MiB.
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

STDOUT = 1
STDERR = 2


@dataclass(frozen=True, slots=True)
class ChildResult:
    """How the child ended; `status` is the shell convention (code or 128+signal)."""

    status: int
    code: int | None
    signal: int | None
    duration: float


def _enlarge(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # /proc/sys/fs/pipe-max-size is lower for unprivileged users: keep the default


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    _enlarge(r)
    return r, w


@functools.cache
def _dev_null() -> int:
    """One /dev/null for every command without stdin, kept open: Popen's DEVNULL opens one per child."""
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def spawn_error(exc: OSError, argv0: str, cwd: str | None) -> RemoteCommandError:
    """Map a failed exec to the shell's 127/126 statuses and a clear reason."""
    if cwd is not None and exc.filename == cwd or isinstance(exc, NotADirectoryError) and cwd:
        return RemoteCommandError(f"cannot change directory to {cwd}: {exc.strerror}", ErrorCode.BAD_CWD, status=126)
    if isinstance(exc, FileNotFoundError):
        return RemoteCommandError(f"{argv0}: command not found", ErrorCode.NOT_FOUND, status=127)
    if isinstance(exc, PermissionError):
        return RemoteCommandError(f"{argv0}: permission denied", ErrorCode.NOT_EXECUTABLE, status=126)
    return RemoteCommandError(f"{argv0}: cannot execute: {exc.strerror}", ErrorCode.EXEC_FAILED, status=126)


@dataclass(frozen=True, slots=True)
class _Ids:
    """Popen's user, group and extra_groups: set in the child before exec, or all None (ours)."""

    uid: int | None = None
    gid: int | None = None
    groups: list[int] | None = None

    @classmethod
    def of(cls, user: RunAs | None) -> _Ids:
        if user is None or user.uid == os.getuid():
            return cls()
        return cls(user.uid, user.gid, list(user.groups))


class Child:
    """One running command and its pipes.

    Args:
        argv: program and arguments (already including /bin/sh -c for shell strings).
        env: the full environment for the child.
        cwd: working directory, or None for the agent's.
        want_stdin: give the child a pipe on stdin rather than /dev/null.
        on_data: called with (STDOUT|STDERR, bytes) as output arrives.
        on_done: called once with the result after both pipes hit EOF and the child exited,
            or after the child exited and `linger` seconds of reading passed without EOF
            (something it left behind holds a pipe); `output_cut` then says so.
        linger: seconds of reading allowed after the exit; None waits for EOF for ever.
        run_as: the user to run as (ids set in the child before exec), or None for ours.
        pty_size: (rows, cols) to run on a new pseudo-terminal; output then all comes as STDOUT.
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        want_stdin: bool,
        on_data: Callable[[int, bytes], None],
        on_done: Callable[[ChildResult], None],
        linger: float | None = None,
        run_as: RunAs | None = None,
        pty_size: tuple[int, int] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._linger_left = linger
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_armed_at = 0.0
        self.output_cut = False
        self.token = proctree.new_token()
        self._on_data = on_data
        self._on_done = on_done
        self._started = time.monotonic()
        self._stdin_buf: deque[memoryview] = deque()
        self._stdin_eof = False
        self.on_stdin_drained: Callable[[int], None] | None = None
        self._open: set[int] = set()
        self._paused = False
        self.resumed_at = 0.0  # loop time reading last resumed after a pause (the idle clock's restart)
        self.max_read = DATA_CHUNK
        self._result: ChildResult | None = None
        self.is_pty = pty_size is not None
        self._last_stdin = b"\n"
        self._run_as = run_as
        self._pty_size = pty_size
        self._proc = self._spawn(argv, {**env, proctree.MARKER_ENV: self.token}, cwd, want_stdin)
        self.pid = self._proc.pid
        self._pidfd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)

    def _spawn(self, argv: list[str], env: dict[str, str], cwd: str | None,
               want_stdin: bool) -> subprocess.Popen[bytes]:
        ours: list[int] = []    # kept by us after the spawn
        theirs: list[int] = []  # the child's ends, closed here once it has them
        try:
            if self._pty_size is not None:
                master, slave = ptyio.open_pty(*self._pty_size)
                ours.append(master)
                theirs.append(slave)
                stdin_r = out_w = err_w = slave
                out_r, err_r = master, -1
                self._stdin_w = os.dup(master) if want_stdin else -1
                if self._stdin_w >= 0:
                    ours.append(self._stdin_w)
            elif want_stdin:
                stdin_r, self._stdin_w = _pipe()
                theirs.append(stdin_r)
                ours.append(self._stdin_w)
            else:
                stdin_r, self._stdin_w = _dev_null(), -1
            if self._pty_size is None:
                out_r, out_w = _pipe()
                err_r, err_w = _pipe()
                ours += [out_r, err_r]
                theirs += [out_w, err_w]
            ids = _Ids.of(self._run_as)
            proc = subprocess.Popen(
                argv, stdin=stdin_r, stdout=out_w, stderr=err_w, cwd=cwd, env=env,
                start_new_session=True, close_fds=True, user=ids.uid, group=ids.gid,
                extra_groups=ids.groups, preexec_fn=ptyio.take_controlling_tty if self.is_pty else None,
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)
        self._out_fds = {STDOUT: out_r, STDERR: err_r}
        for stream, fd in self._out_fds.items():
            if fd >= 0:
                os.set_blocking(fd, False)
                self._open.add(stream)
                self._loop.add_reader(fd, self._read, stream)
        if self._stdin_w >= 0:
            os.set_blocking(self._stdin_w, False)
        return proc

    def resize(self, rows: int, cols: int) -> None:
        """Apply a new window size to the pty (the kernel sends SIGWINCH); ignored without one."""
        fd = self._out_fds.get(STDOUT, -1)
        if self.is_pty and fd >= 0:
            try:
                ptyio.set_size(fd, rows, cols)
            except OSError:
                pass  # the terminal is going away with the command

    # -- output --------------------------------------------------------------

    def _read(self, stream: int) -> None:
        fd = self._out_fds[stream]
        try:
            data = os.read(fd, self.max_read)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._on_data(stream, data)
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        self._out_fds[stream] = -1
        self._open.discard(stream)
        self._maybe_done()

    def pause_reading(self) -> None:
        """Stop reading output: the child blocks once its pipes fill."""
        if not self._paused:
            self._paused = True
            self._stop_linger_clock()
            for fd in self._out_fds.values():
                if fd >= 0:
                    self._loop.remove_reader(fd)

    @property
    def reading_paused(self) -> bool:
        return self._paused

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self.resumed_at = self._loop.time()
            for stream, fd in self._out_fds.items():
                if fd >= 0:
                    self._loop.add_reader(fd, self._read, stream)
            self._maybe_start_linger_clock()

    # -- linger --------------------------------------------------------------
    # After the main process exits, output is read for at most `linger` seconds
    # more. The clock runs only while we read: time spent paused because the
    # controller has not granted window is the controller's, and must not cut
    # output that a plain `cat bigfile` already wrote into the pipe.

    def _maybe_start_linger_clock(self) -> None:
        if (self._result is not None and self._open and not self._paused
                and self._linger_left is not None and self._linger_timer is None):
            self._linger_armed_at = self._loop.time()
            self._linger_timer = self._loop.call_later(self._linger_left, self._linger_expired)

    def _stop_linger_clock(self) -> None:
        if self._linger_timer is not None and self._linger_left is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
            self._linger_left = max(0.0, self._linger_left - (self._loop.time() - self._linger_armed_at))

    def _linger_expired(self) -> None:
        """Stop waiting for EOF: whoever still holds the pipes is not the command."""
        self._linger_timer = None
        self.output_cut = True
        self._close_output()
        self._open.clear()
        self._maybe_done()

    # -- stdin ---------------------------------------------------------------

    def write_stdin(self, data: bytes) -> None:
        """Queue stdin bytes; the caller bounds how much is in flight (its window)."""
        if self._stdin_w < 0 or self._stdin_eof:
            return
        if not data:
            return
        if not self._stdin_buf:
            self._loop.add_writer(self._stdin_w, self._flush_stdin)
        self._stdin_buf.append(memoryview(data))
        self._last_stdin = data[-1:]

    def close_stdin(self) -> None:
        if self.is_pty and self._stdin_w >= 0 and not self._stdin_eof:
            # A terminal has no end of input, only its EOF character: once after a
            # newline, twice after a partial line (the first delivers the line).
            self.write_stdin(ptyio.EOF_BYTES * (1 if self._last_stdin == b"\n" else 2))
        self._stdin_eof = True
        if not self._stdin_buf:
            self._close_stdin_fd()

    def _flush_stdin(self) -> None:
        written = 0
        try:
            while self._stdin_buf:
                chunk = self._stdin_buf[0]
                n = os.write(self._stdin_w, chunk)
                written += n
                if n < len(chunk):
                    self._stdin_buf[0] = chunk[n:]
                    break
                self._stdin_buf.popleft()
        except BlockingIOError:
            pass
        except OSError as exc:  # EPIPE: the child closed its stdin; drop the rest
            if exc.errno not in (errno.EPIPE, errno.EBADF):
                raise
            written += sum(len(c) for c in self._stdin_buf)
            self._stdin_buf.clear()
        if not self._stdin_buf:
            self._loop.remove_writer(self._stdin_w)
            if self._stdin_eof:
                self._close_stdin_fd()
        if written and self.on_stdin_drained is not None:
            self.on_stdin_drained(written)

    def _close_stdin_fd(self) -> None:
        if self._stdin_w >= 0:
            self._loop.remove_writer(self._stdin_w)
            os.close(self._stdin_w)
            self._stdin_w = -1

    # -- exit ----------------------------------------------------------------

    def _on_exit(self) -> None:
        if self._proc.poll() is None:
            return
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        rc = self._proc.returncode
        duration = time.monotonic() - self._started
        if rc < 0:
            self._result = ChildResult(128 - rc, None, -rc, duration)
        else:
            self._result = ChildResult(rc, rc, None, duration)
        self._maybe_start_linger_clock()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._result is not None and not self._open:
            self._stop_linger_clock()
            self._close_stdin_fd()
            self._stdin_buf.clear()
            result, self._result = self._result, None
            self._open.add(-1)  # never report twice
            self._on_done(result)

    def signal(self, sig: int) -> None:
        """Send `sig` to the child's whole process group."""
        try:
            os.killpg(self.pid, sig)
        except OSError:
            pass  # gone, not ours any more, or a number this kernel has no signal for (EINVAL)

    def _close_output(self) -> None:
        for stream, fd in self._out_fds.items():
            if fd >= 0:
                self._loop.remove_reader(fd)
                os.close(fd)
                self._out_fds[stream] = -1

    def close(self) -> None:
        """Release every fd; the caller has made sure the tree is dead or detached."""
        self._stop_linger_clock()
        self._close_output()
        self._close_stdin_fd()
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

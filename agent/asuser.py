"""File operations with another user's credentials, for `put`/`get`/`put -r`/`get -r --user` (issue 17).

The kernel checks permissions against the calling process's ids, and the agent
is one multi-threaded process: switching its effective ids (seteuid) would apply
to every thread at once. So a request acting as a user forks one helper child
that drops to the user's groups, gid and uid and then serves that request's file
operations one at a time over a unix socket: resolve a path, stat, list a
directory, read a link, rename, mkdir, unlink, remove a tree, or open a file and
pass the descriptor back (SCM_RIGHTS). The agent reads and writes through the
descriptors, so what the user could not open is never opened, what the user
creates belongs to the user, and a path the user could not even look at fails
with the error the user would get from `ls` or `cat`. One helper per request,
not per operation: a fork costs milliseconds, a question to a running helper
tens of microseconds, which is what lets a tree of thousands of files go at
full speed.

Why fork without exec, in a process with threads: the child runs only code
already loaded (no imports, no logging, no I/O buffers, the garbage collector
off), so it takes none of the locks another thread might have held at the fork.
It first closes every descriptor it inherited but its socket (a connection's
socket held open by a helper would outlive the connection) and puts the signals
back to their defaults. An exec'd helper would need an interpreter every user
may execute, which a per-user Python install (under /root, say) is not.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import socket
import stat
import struct
import threading
from types import TracebackType
from typing import Any

from shoal.agent.runas import RunAs
from shoal.hostio.files import PathArg, remove_tree

__all__ = ["UserFiles"]

_HEAD = struct.Struct(">I")
# Largest answer or question (a directory's listing): far above any real directory.
_MAX_MESSAGE = 256 * 1024 * 1024


class UserFiles:
    """`shoal.hostio.files.Files` as `user`: blocking, so call from a worker thread.

    The helper starts with the first operation and ends with `close` (or the
    `with` block). Operations from several threads take turns.
    """

    def __init__(self, user: RunAs) -> None:
        self.user = user
        self._lock = threading.Lock()
        self._channel: socket.socket | None = None
        self._pid = 0
        self._closed = False

    def __enter__(self) -> UserFiles:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """End the helper (it exits when its socket closes) and reap it."""
        with self._lock:
            self._closed = True
            channel, self._channel = self._channel, None
            if channel is None:
                return
            channel.close()
            try:
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass  # the agent's orphan reaper got there first

    # -- Files -----------------------------------------------------------------

    def open(self, path: PathArg, flags: int, mode: int = 0o777) -> int:
        _, fds = self._ask("open", path, flags, mode)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(errno.EIO, "the file helper sent no descriptor", os.fspath(path))
        return fds[0]  # close-on-exec from the moment it arrived (MSG_CMSG_CLOEXEC)

    def stat(self, path: PathArg, follow: bool = True) -> os.stat_result:
        fields, _ = self._ask("stat", path, follow)
        return os.stat_result(fields)

    def scandir(self, path: PathArg) -> list[tuple[str, os.stat_result]]:
        entries, _ = self._ask("scandir", path)
        return [(name, os.stat_result(fields)) for name, fields in entries]

    def readlink(self, path: PathArg) -> str:
        target, _ = self._ask("readlink", path)
        return str(target)

    def realpath(self, path: PathArg) -> str:
        real, _ = self._ask("realpath", path)
        return str(real)

    def rename(self, src: PathArg, dst: PathArg) -> None:
        self._ask("rename", src, dst)

    def mkdir(self, path: PathArg, mode: int = 0o777) -> None:
        self._ask("mkdir", path, mode)

    def unlink(self, path: PathArg) -> None:
        self._ask("unlink", path)

    def rmtree(self, path: PathArg) -> None:
        self._ask("rmtree", path)

    # -- the conversation --------------------------------------------------------

    def _ask(self, op: str, path: PathArg, *args: Any) -> tuple[Any, list[int]]:
        """Send one operation, wait for its answer; OSError with the helper's errno on failure."""
        question = json.dumps([op, os.fspath(path), *(os.fspath(a) if isinstance(a, os.PathLike) else a
                                                      for a in args)]).encode()
        with self._lock:
            channel = self._start()
            try:
                _send(channel, question, [])
                answer, fds = _receive(channel)
            except OSError as exc:
                raise OSError(errno.EIO, f"the file helper failed ({exc.strerror or exc})", os.fspath(path)) from None
        if answer is None:
            raise OSError(errno.EIO, "the file helper ended", os.fspath(path))
        code, value = json.loads(answer)
        if code:
            for fd in fds:
                os.close(fd)
            raise OSError(code, os.strerror(code), value or os.fspath(path))
        return value, fds

    def _start(self) -> socket.socket:
        if self._channel is not None:
            return self._channel
        if self._closed:
            raise OSError(errno.EIO, "the file helper was closed")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        keep, limit = theirs.fileno(), _fd_limit()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; it answers through the socket
            _child(theirs, keep, limit, self.user)
        theirs.close()
        self._channel, self._pid = ours, pid
        return ours


def _fd_limit() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


# -- framing: a 4-byte length, then JSON; descriptors ride on the first bytes -------


def _send(channel: socket.socket, body: bytes, fds: list[int]) -> None:
    data = _HEAD.pack(len(body)) + body
    sent = socket.send_fds(channel, [data], fds) if fds else channel.send(data)
    if sent < len(data):
        channel.sendall(data[sent:])


def _receive(channel: socket.socket) -> tuple[bytes | None, list[int]]:
    """One message and the descriptors that came with it; (None, []) at end of stream."""
    head, fds = b"", []
    while len(head) < _HEAD.size:
        data, more, _, _ = socket.recv_fds(channel, _HEAD.size - len(head), 4, socket.MSG_CMSG_CLOEXEC)
        fds += more
        if not data:
            return None, fds
        head += data
    (size,) = _HEAD.unpack(head)
    if size > _MAX_MESSAGE:
        raise OSError(errno.EMSGSIZE, "file helper message too large")
    body = bytearray()
    while len(body) < size:
        chunk = channel.recv(min(size - len(body), 1 << 20))
        if not chunk:
            return None, fds
        body += chunk
    return bytes(body), fds


# -- the helper child ------------------------------------------------------------


def _child(channel: socket.socket, keep: int, limit: int, user: RunAs) -> None:  # pragma: no cover
    """In the forked child: shed what we inherited, become the user, serve, and never return."""
    try:
        gc.disable()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in range(3):  # 0-2 on /dev/null, so a stray write can never land in a file we opened
            if fd not in (keep, null):
                os.dup2(null, fd)
        os.closerange(3, keep)
        os.closerange(max(3, keep + 1), limit)
        signal.set_wakeup_fd(-1)
        for sig in signal.valid_signals():
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        _serve(channel)
    except BaseException:
        pass
    finally:
        os._exit(0)


def _serve(channel: socket.socket) -> None:  # pragma: no cover - runs in the child
    while True:
        question, _ = _receive(channel)
        if question is None:
            return
        fds: list[int] = []
        try:
            op, *args = json.loads(question)
            value, fds = _perform(op, args)
            answer = [0, value]
        except OSError as exc:
            answer = [exc.errno or errno.EIO, exc.filename if isinstance(exc.filename, str) else None]
        except Exception:
            answer = [errno.EINVAL, None]
        try:
            _send(channel, json.dumps(answer).encode(), fds)
        finally:
            for fd in fds:
                os.close(fd)


def _stat_fields(st: os.stat_result) -> list[float]:
    """What rebuilds the stat_result on the other side: its ten fields, then the float and ns times."""
    return [*st[:10], st.st_atime, st.st_mtime, st.st_ctime, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]


def _perform(op: str, args: list[Any]) -> tuple[Any, list[int]]:  # pragma: no cover - runs in the child
    """Do one operation as the user: its answer, and the descriptors that go with it."""
    if op == "open":
        return None, [os.open(args[0], args[1] | os.O_CLOEXEC, args[2])]
    if op == "stat":
        return _stat_fields(os.stat(args[0], follow_symlinks=args[1])), []
    if op == "scandir":
        with os.scandir(args[0]) as entries:
            return [[e.name, _stat_fields(e.stat(follow_symlinks=False))] for e in entries], []
    if op == "readlink":
        return os.readlink(args[0]), []
    if op == "realpath":
        return os.path.realpath(args[0]), []
    if op == "rename":
        os.rename(args[0], args[1])
    elif op == "mkdir":
        os.mkdir(args[0], args[1])
    elif op == "unlink":
        os.unlink(args[0])
    elif op == "rmtree":
        if stat.S_ISLNK(os.lstat(args[0]).st_mode):  # rmtree refuses a link with an errno-less error
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), args[0])
        remove_tree(args[0])
    else:
        raise ValueError(op)
    return None, []

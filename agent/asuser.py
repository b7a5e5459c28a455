"""File operations with another user's credentials, for `put`/`get --user` (issue 17).

The kernel checks permissions against the calling process's ids, and the agent
is one multi-threaded process: switching its effective ids (seteuid) would apply
to every thread at once. So each operation runs in a forked child that drops to
the user's groups, gid and uid and does one thing: open a file and pass the
descriptor back over a unix socket (SCM_RIGHTS), or rename, or make a directory.
The agent then reads or writes through the descriptor, so what the user could not
open is never opened, and what the user creates belongs to the user.

Why fork without exec, in a process with threads: the child makes only direct
system calls (setgroups, setgid, setuid, open, rename, mkdir, sendmsg) and
`_exit`s, taking none of the locks another thread might have held at the fork
(no logging, no imports, no I/O buffers). An exec'd helper would be cleaner still,
but needs an interpreter every user may execute, which a per-user Python
install (under /root, say) is not.
"""

from __future__ import annotations

import errno
import os
import socket

from shoal.agent.runas import RunAs

__all__ = ["UserFiles"]


class UserFiles:
    """open, rename and mkdir as `user` (blocking: call from a worker thread)."""

    def __init__(self, user: RunAs) -> None:
        self.user = user

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        """os.open as the user; the descriptor is ours (close-on-exec)."""
        fds = self._run("open", path, str(flags), str(mode))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError(errno.EIO, "the file helper sent no descriptor", os.fspath(path))
        os.set_inheritable(fds[0], False)
        return fds[0]

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        self._run("rename", src, dst)

    def mkdir(self, path: str | os.PathLike[str], mode: int = 0o777) -> None:
        self._run("mkdir", path, str(mode))

    def _run(self, op: str, path: str | os.PathLike[str], *args: str | os.PathLike[str]) -> list[int]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours:
            with theirs:
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child; it reports through the socket
                    _child(theirs, self.user, op, path, args)
            try:
                answer, fds, _, _ = socket.recv_fds(ours, 64, 1)
            finally:
                os.waitpid(pid, 0)
        if answer == b"ok":
            return fds
        for fd in fds:
            os.close(fd)
        code = int(answer[1:]) if answer[:1] == b"E" and answer[1:].isdigit() else errno.EIO
        raise OSError(code, os.strerror(code), os.fspath(path))


def _child(channel: socket.socket, user: RunAs, op: str, path: str | os.PathLike[str],
           args: tuple[str | os.PathLike[str], ...]) -> None:
    """In the forked child: become the user, do `op`, answer, and never return."""
    try:
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
        if op == "open":
            fd = os.open(path, int(os.fspath(args[0])), int(os.fspath(args[1])))
            socket.send_fds(channel, [b"ok"], [fd])
        elif op == "rename":
            os.rename(path, args[0])
            channel.sendall(b"ok")
        elif op == "mkdir":
            os.mkdir(path, int(os.fspath(args[0])))
            channel.sendall(b"ok")
    except OSError as exc:
        try:
            channel.sendall(b"E%d" % (exc.errno or errno.EIO))
        except OSError:
            pass
    finally:
        os._exit(0)

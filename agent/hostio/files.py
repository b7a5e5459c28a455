"""Whose rights a file operation uses: `Files`, and `LOCAL_FILES`, this process's own.

Every path a transfer touches (resolving it, stat, listing, open, rename, mkdir,
removal) goes through one `Files`, so the agent can hand the whole of a request
to another user's (`shoal.agent.asuser.UserFiles`) and the kernel then judges
each step with that user's credentials: what the user could not see is neither
found nor listed, and the errors are the ones `ls` or `cat` would give it.
Operations on an open descriptor (read, write, fchmod, fsync) need no such
object: the descriptor was opened with the right rights.
"""

from __future__ import annotations

import os
import shutil
from typing import Protocol

__all__ = ["Files", "LocalFiles", "LOCAL_FILES", "PathArg", "remove_tree"]

PathArg = str | os.PathLike[str]


class Files(Protocol):
    """The file operations a transfer needs, with os's signatures and errors (OSError)."""

    def open(self, path: PathArg, flags: int, mode: int = 0o777) -> int:
        """os.open; the descriptor belongs to the caller (close-on-exec)."""
        ...

    def stat(self, path: PathArg, follow: bool = True) -> os.stat_result:
        ...

    def scandir(self, path: PathArg) -> list[tuple[str, os.stat_result]]:
        """The names in one directory with their lstat, unsorted."""
        ...

    def readlink(self, path: PathArg) -> str:
        ...

    def realpath(self, path: PathArg) -> str:
        """os.path.realpath: `..` and the links this user can see resolved."""
        ...

    def rename(self, src: PathArg, dst: PathArg) -> None:
        ...

    def mkdir(self, path: PathArg, mode: int = 0o777) -> None:
        ...

    def unlink(self, path: PathArg) -> None:
        ...

    def rmtree(self, path: PathArg) -> None:
        """Remove a directory and everything in it, never following a link inside."""
        ...


class LocalFiles:
    """File operations with this process's own rights."""

    def open(self, path: PathArg, flags: int, mode: int = 0o777) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def stat(self, path: PathArg, follow: bool = True) -> os.stat_result:
        return os.stat(path, follow_symlinks=follow)

    def scandir(self, path: PathArg) -> list[tuple[str, os.stat_result]]:
        with os.scandir(path) as entries:
            return [(entry.name, entry.stat(follow_symlinks=False)) for entry in entries]

    def readlink(self, path: PathArg) -> str:
        return os.readlink(path)

    def realpath(self, path: PathArg) -> str:
        return os.path.realpath(path)

    def rename(self, src: PathArg, dst: PathArg) -> None:
        os.rename(src, dst)

    def mkdir(self, path: PathArg, mode: int = 0o777) -> None:
        os.mkdir(path, mode)

    def unlink(self, path: PathArg) -> None:
        os.unlink(path)

    def rmtree(self, path: PathArg) -> None:
        remove_tree(path)


LOCAL_FILES: Files = LocalFiles()


def remove_tree(path: PathArg) -> None:
    """shutil.rmtree, whose errors name the full path that failed (not just its last name)."""
    shutil.rmtree(path, onerror=_name_in_full)


def _name_in_full(function: object, path: str, info: tuple[type[BaseException], BaseException, object]) -> None:
    error = info[1]
    if isinstance(error, OSError) and error.errno:
        raise OSError(error.errno, error.strerror, path) from None
    raise error

"""Streamed reads for `get` and the tree walk of recursive transfers.

Memory per transfer is one chunk plus a hash state: nothing here reads a whole file.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Iterator

from shoal.protocol.errors import ErrorCode
from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.files import LOCAL_FILES, Files

__all__ = ["FileReader", "maybe_stat", "walk_tree"]


class FileReader:
    """Stream one regular file out for `get`, hashing what was read.

    `size`, `mode`, `mtime` and `owner` come from the open file, so they describe
    what is being sent even if the path is replaced meanwhile.
    """

    __slots__ = ("path", "size", "mode", "mtime", "owner", "bytes_read", "_fd", "_hash")

    def __init__(self, path: Path, fd: int, st: os.stat_result) -> None:
        self.path = path
        self.size = st.st_size
        self.mode = stat.S_IMODE(st.st_mode)
        self.mtime = st.st_mtime
        self.owner = (st.st_uid, st.st_gid)
        self.bytes_read = 0
        self._fd = fd
        self._hash = hashlib.sha256()

    @classmethod
    def open(cls, path: str | os.PathLike[str], files: Files = LOCAL_FILES) -> FileReader:
        """Open `path` for reading, with `files`' rights (the agent passes a user's for `--user`).

        Raises:
            FileTransferError: is_directory (send directories with `walk_tree`),
                io_error for anything but a regular file (a FIFO or device would
                block or never end), not_found, permission_denied.
        """
        # O_NONBLOCK so opening a FIFO cannot hang the agent before we can refuse it.
        try:
            fd = files.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            raise map_os_error(err, path) from err
        try:
            st = _regular_file_stat(fd, path)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return cls(Path(path), fd, st)

    def read(self, n: int) -> bytes:
        """Return up to `n` bytes; b"" at end of file."""
        if self._fd < 0:
            raise ValueError(f"reader for {self.path} is closed")
        try:
            data = os.read(self._fd, n)
        except OSError as err:
            raise map_os_error(err, self.path) from err
        self._hash.update(data)
        self.bytes_read += len(data)
        return data

    def hexdigest(self) -> str:
        """Return the sha256 of everything read so far (the whole file at EOF)."""
        return self._hash.hexdigest()

    def close(self) -> None:
        """Release the file descriptor. Safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _regular_file_stat(fd: int, path: str | os.PathLike[str]) -> os.stat_result:
    """Stat an open file and refuse anything but a regular file."""
    try:
        st = os.fstat(fd)
    except OSError as err:
        raise map_os_error(err, path) from err
    if stat.S_ISDIR(st.st_mode):
        raise FileTransferError(ErrorCode.IS_DIRECTORY, path)
    if not stat.S_ISREG(st.st_mode):
        raise FileTransferError(ErrorCode.IO_ERROR, path, "not a regular file")
    return st


def walk_tree(root: str | os.PathLike[str], files: Files = LOCAL_FILES) -> Iterator[tuple[str, os.stat_result]]:
    """Yield `(relative_path, lstat)` for everything below the directory `root`, seen with `files`' rights.

    Order is breadth first with names sorted in each directory, so a directory
    always comes before its contents and a recursive put can create it first.
    Relative paths use `/`. Symlinks are reported as links (their own lstat) and
    never followed, so nothing outside `root` is visited; the caller decides
    whether to skip or recreate them. `root` itself is not yielded.

    Raises:
        FileTransferError: not_directory or not_found for `root`, or the code of a
            directory that cannot be listed.
    """
    top = Path(root)
    st = maybe_stat(top, follow=True, files=files)
    if st is None:
        raise FileTransferError(ErrorCode.NOT_FOUND, top)
    if not stat.S_ISDIR(st.st_mode):
        raise FileTransferError(ErrorCode.NOT_DIRECTORY, top)
    pending: deque[tuple[Path, str]] = deque([(top, "")])
    while pending:
        directory, prefix = pending.popleft()
        for name, entry_stat in _list_directory(directory, files):
            yield prefix + name, entry_stat
            if stat.S_ISDIR(entry_stat.st_mode):
                pending.append((directory / name, f"{prefix}{name}/"))


def _list_directory(directory: Path, files: Files) -> list[tuple[str, os.stat_result]]:
    """Return the sorted names and lstats of one directory's entries."""
    try:
        found = files.scandir(directory)
    except OSError as err:
        raise map_os_error(err, err.filename or directory) from err
    return sorted(found, key=lambda item: item[0])


def maybe_stat(path: Path, *, follow: bool, files: Files = LOCAL_FILES) -> os.stat_result | None:
    """Stat `path` (with `files`' rights), or return None when nothing is there."""
    try:
        return files.stat(path, follow)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise map_os_error(err, path) from err

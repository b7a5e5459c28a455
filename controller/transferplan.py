"""What a `put` will send: the local files and directories, checked before any host is touched.

Planning first means a missing local file or a directory given without `-r` is one
local error before any connection, not the same error on every host, and the total
size is known for the progress bar. Directories are walked breadth first, so each
directory is created on the hosts before anything inside it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable

from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.reader import walk_tree
from shoal.protocol.errors import ErrorCode

__all__ = ["PlanItem", "PutPlan", "plan_put"]


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One file or directory to create on every host.

    `source` indexes the LOCAL argument it came from; `relative` is its path
    below that argument ("" for the argument itself), `/`-separated.
    """

    local: str
    source: int
    relative: str
    is_dir: bool
    size: int
    mode: int
    mtime: float
    owner: tuple[int, int]


@dataclass(frozen=True, slots=True)
class PutPlan:
    """Everything to send, in order, and how many content bytes that is per host."""

    items: tuple[PlanItem, ...]
    into_dir: bool
    total_bytes: int

    @property
    def files(self) -> int:
        return sum(not item.is_dir for item in self.items)


def plan_put(sources: list[str], remote_path: str, recursive: bool,
             skipped: Callable[[str, str], None] | None = None) -> PutPlan:
    """Check the LOCAL arguments and list what to send.

    Args:
        sources: local paths as given; symlinks among them are followed, like cp.
        remote_path: the destination; a trailing `/` means "into this directory".
        recursive: copy directories (their symlinks and special files are skipped).
        skipped: told `(path, why)` for each entry inside a tree that is left out.

    Raises:
        FileTransferError: a source is missing, unreadable, a directory without
            `recursive`, or not a regular file.
    """
    items: list[PlanItem] = []
    for index, source in enumerate(sources):
        st = _stat(source)
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                raise FileTransferError(ErrorCode.IS_DIRECTORY, source, "is a directory (use -r to copy directories)")
            items.append(_item(source, index, "", st))
            items.extend(_tree(source, index, skipped))
        elif stat.S_ISREG(st.st_mode):
            items.append(_item(source, index, "", st))
        else:
            raise FileTransferError(ErrorCode.IO_ERROR, source, "not a regular file")
    into = remote_path.endswith("/") or len(sources) > 1
    return PutPlan(tuple(items), into, sum(item.size for item in items))


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        raise map_os_error(err, path) from err


def _item(local: str, source: int, relative: str, st: os.stat_result) -> PlanItem:
    is_dir = stat.S_ISDIR(st.st_mode)
    return PlanItem(local, source, relative, is_dir, 0 if is_dir else st.st_size,
                    stat.S_IMODE(st.st_mode), st.st_mtime, (st.st_uid, st.st_gid))


def _tree(top: str, source: int, skipped: Callable[[str, str], None] | None) -> list[PlanItem]:
    """The directories and regular files below `top`; links and devices are reported, not sent."""
    found = []
    for relative, st in walk_tree(top):
        local = os.path.join(top, relative)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            found.append(_item(local, source, relative, st))
        elif skipped is not None:
            skipped(local, "symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file")
    return found

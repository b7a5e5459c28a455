"""What a directory tree holds, and paths inside one that cross no symlink.

Both ends of a tree sync use this: the agent lists its destination for LIST_TREE
and checks every path a recursive put, get or delete names below the tree's root;
the controller hashes its own files for `--checksum` and checks the local tree a
`get -r` writes. Entries are plain dicts because they travel as JSON
(PROTOCOL.md, "Tree sync").

The link rule: below a tree's root no existing component of a path may be a
symlink, so nothing is ever written, read or deleted through one. The root itself
was resolved and checked against the key's roots by the caller. As with
`resolve_path`, someone swapping a directory for a link between this check and
the operation can still race it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from shoal.protocol.errors import ErrorCode

from shoal.hostio.fileerrors import FileTransferError, map_os_error
from shoal.hostio.files import LOCAL_FILES, Files
from shoal.hostio.reader import walk_tree

__all__ = ["ENTRY_TYPES", "entry_type", "list_tree", "file_sha256", "path_below", "remove_below"]

# The kinds of entry a listing reports; "other" covers FIFOs, sockets and devices.
ENTRY_TYPES = ("file", "dir", "link", "other")
# Bytes read at a time when hashing a file for --checksum.
_HASH_CHUNK = 1024 * 1024


def entry_type(mode: int) -> str:
    """The listing's name for a file type from an lstat mode."""
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def list_tree(root: str | os.PathLike[str], with_sha256: bool = False,
              files: Files = LOCAL_FILES) -> list[dict[str, Any]]:
    """Every entry below the directory `root`, breadth first, links reported not followed.

    What is listed, read and hashed is seen with `files`' rights, so a listing
    for a user holds only what that user could list and read itself.

    Each entry: `path` (relative, `/`-separated), `type`, `size`, `mtime`, `mode`
    (permission bits), `sha256` of regular files when asked (else null), and
    `target` of links (else null).

    Raises:
        FileTransferError: `root` missing (`not_found`), not a directory, unreadable.
    """
    entries = []
    for relative, st in walk_tree(root, files):
        kind = entry_type(st.st_mode)
        full = os.path.join(root, relative)
        entries.append({
            "path": relative, "type": kind, "size": st.st_size if kind == "file" else 0,
            "mtime": st.st_mtime, "mode": stat.S_IMODE(st.st_mode),
            "sha256": file_sha256(full, files) if with_sha256 and kind == "file" else None,
            "target": _read_link(full, files) if kind == "link" else None,
        })
    return entries


def file_sha256(path: str | os.PathLike[str], files: Files = LOCAL_FILES) -> str:
    """The sha256 of a regular file, read in chunks; a link is never followed."""
    digest = hashlib.sha256()
    try:
        fd = files.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise map_os_error(err, path) from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileTransferError(ErrorCode.IO_ERROR, path, "not a regular file")
        while chunk := os.read(fd, _HASH_CHUNK):
            digest.update(chunk)
    except OSError as err:
        raise map_os_error(err, path) from err
    finally:
        os.close(fd)
    return digest.hexdigest()


def _read_link(path: str, files: Files) -> str:
    try:
        return files.readlink(path)
    except OSError as err:
        raise map_os_error(err, path) from err


def path_below(root: Path, named_root: str, path: str, *, final_link: bool = False,
               files: Files = LOCAL_FILES, checked: set[Path] | None = None) -> Path:
    """The path `path` names below `root`, checked (with `files`' rights) to cross no symlink.

    Args:
        root: the tree's real (resolved, authorized) root.
        named_root: the root as the peer spelled it; `path` must be it or lie below it.
        path: the path the peer named.
        final_link: allow the last component to be a link (to remove the link itself).
        checked: directories found to be real ones by earlier calls, not looked at
            again (and added to): a batch of paths in a few directories checks
            each directory once.

    Raises:
        FileTransferError: `bad_path` when `path` is not below `named_root`, holds
            `.` or `..` below it, or crosses a symlink; `not_directory` when a
            component below the root is not a directory.
    """
    relative = _relative_parts(named_root, path)
    current = root
    for index, part in enumerate(relative):
        current = current / part
        last = index == len(relative) - 1
        if checked is not None and not last and current in checked:
            continue
        try:
            st = files.stat(current, follow=False)
        except FileNotFoundError:
            break
        except OSError as err:
            raise map_os_error(err, current) from err
        if stat.S_ISLNK(st.st_mode) and not (last and final_link):
            raise FileTransferError(ErrorCode.BAD_PATH, current, "is a symbolic link; nothing is written, read "
                                    "or deleted through links")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise FileTransferError(ErrorCode.NOT_DIRECTORY, current)
        if checked is not None and not last:
            checked.add(current)
    return root.joinpath(*relative)


def _relative_parts(named_root: str, path: str) -> tuple[str, ...]:
    """The components of `path` below `named_root`, compared as written."""
    top, full = PurePosixPath(named_root), PurePosixPath(path)
    if "\0" in path or not full.is_absolute() or full.parts[:len(top.parts)] != top.parts:
        raise FileTransferError(ErrorCode.BAD_PATH, path, f"not below the tree {named_root}")
    parts = full.parts[len(top.parts):]
    if any(part in (".", "..") for part in parts) or "/./" in f"{path}/" or "/../" in f"{path}/":
        raise FileTransferError(ErrorCode.BAD_PATH, path, "`.` and `..` are not allowed below a tree")
    return parts


def remove_below(root: Path, named_root: str, path: str, files: Files = LOCAL_FILES) -> bool:
    """Remove what `path` names below `root`: a file or link unlinked, a directory with its contents.

    Never the root itself, never through a link (a link is removed, not its
    target; `rmtree` does not follow links inside the directory either), and
    only what `files`' user may remove. Returns False when nothing was there.
    """
    target = path_below(root, named_root, path, final_link=True, files=files)
    if target == root:
        raise FileTransferError(ErrorCode.BAD_PATH, path, "the tree's root itself is never removed")
    try:
        st = files.stat(target, follow=False)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise map_os_error(err, target) from err
    try:
        if stat.S_ISDIR(st.st_mode):
            files.rmtree(target)
        else:
            files.unlink(target)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise map_os_error(err, getattr(err, "filename", None) or target) from err
    return True

"""File transfer: one file up or down, a tree's listing and removals, small files in batches."""

from __future__ import annotations

from typing import Any

from shoal.protocol.messageclass import field, message
from shoal.protocol.messages.core import Message, MessageType

__all__ = ["PutFile", "GetFile", "FileInfo", "FileData", "FileEnd", "FileDone", "ListTree", "TreeEntries",
           "RemovePaths", "Removed", "PutBatch", "BatchDone"]


@message
class PutFile(Message):
    """Open an upload: FILE_DATA chunks follow, then FILE_END with the digest."""

    TYPE = MessageType.PUT_FILE
    path: str = ""
    size: int = 0
    mode: int | None = None
    mtime: float | None = None
    owner: list[int] | None = None
    into_dir: bool = False
    name: str = ""
    mkdir: bool = False
    window: int = 0
    user: str | None = None  # create and check as this user (issue 17); named in `requires`
    requires: list[str] = field(default_factory=list)
    tree: str = ""
    parents: bool = False


@message
class GetFile(Message):
    """Open a download of one regular file."""

    TYPE = MessageType.GET_FILE
    path: str = ""
    window: int = 0
    user: str | None = None  # open as this user (issue 17); named in `requires`
    requires: list[str] = field(default_factory=list)
    tree: str = ""


@message
class FileInfo(Message):
    """Agent's answer to PUT/GET: the transfer is open; size/mode/mtime for GET."""

    TYPE = MessageType.FILE_INFO
    size: int = 0
    mode: int = 0
    mtime: float = 0.0
    window: int = 0


@message
class FileData(Message):
    """A chunk of file content."""

    TYPE = MessageType.FILE_DATA
    RAW = True
    data: bytes = b""


@message
class FileEnd(Message):
    """No more chunks; the sender's SHA-256 of everything sent."""

    TYPE = MessageType.FILE_END
    sha256: str = ""


@message
class FileDone(Message):
    """The receiver verified and committed the file."""

    TYPE = MessageType.FILE_DONE
    sha256: str = ""
    bytes: int = 0
    path: str = ""


@message
class ListTree(Message):
    """Ask what a directory tree holds: one entry per path, with sha256 of files on request."""

    TYPE = MessageType.LIST_TREE
    path: str = ""
    sha256: bool = False
    user: str | None = None  # list (and hash) as this user; feature "tree_user", named in `requires`
    requires: list[str] = field(default_factory=list)


@message
class TreeEntries(Message):
    """Part of a LIST_TREE answer; the last part has `done` set."""

    TYPE = MessageType.TREE_ENTRIES
    entries: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False


@message
class RemovePaths(Message):
    """Remove entries below `tree`, named relative to it, never following a link."""

    TYPE = MessageType.REMOVE_PATHS
    tree: str = ""
    paths: list[str] = field(default_factory=list)
    user: str | None = None  # remove as this user; feature "tree_user", named in `requires`
    requires: list[str] = field(default_factory=list)


@message
class Removed(Message):
    """REMOVE_PATHS is done: how many of its paths were there and are now gone."""

    TYPE = MessageType.REMOVED
    count: int = 0


@message
class PutBatch(Message):
    """Many small files (and directories) of a recursive put in one request.

    Their contents follow as FILE_DATA, back to back in `files` order, with no
    FILE_INFO, WINDOW or FILE_END: the request's window is its total size.
    Each entry is checked by `shoal.protocol.fields.check_request`.
    """

    TYPE = MessageType.PUT_BATCH
    tree: str = ""
    files: list[dict[str, Any]] = field(default_factory=list)
    user: str | None = None
    requires: list[str] = field(default_factory=list)


@message
class BatchDone(Message):
    """A PUT_BATCH is applied: every entry not in `errors` is in place and on disk."""

    TYPE = MessageType.BATCH_DONE
    written: int = 0
    bytes: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

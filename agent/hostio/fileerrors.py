"""File transfer errors: one exception whose `code` goes over the wire unchanged.

Both ends raise `FileTransferError`, a `RemoteCommandError` whose `code` is one of
`CODES`, and translate OSErrors into it with `map_os_error` at one boundary.
"""

from __future__ import annotations

import errno
import os

from shoal.protocol.errors import RemoteCommandError

__all__ = ["CODES", "FileTransferError", "map_os_error"]

# Machine codes a transfer failure carries; the controller maps them to messages
# and exit statuses, so they are part of the wire contract.
CODES = frozenset({
    "bad_path", "not_found", "permission_denied", "no_space", "is_directory",
    "not_directory", "outside_root", "checksum_mismatch", "io_error",
})

_ERRNO_CODES = {
    errno.ENOENT: "not_found",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "permission_denied",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EISDIR: "is_directory",
    errno.ENOTDIR: "not_directory",
}

_DEFAULT_DETAIL = {
    "bad_path": "invalid path",
    "not_found": "no such file or directory",
    "permission_denied": "permission denied",
    "no_space": "no space left on device",
    "is_directory": "is a directory",
    "not_directory": "not a directory",
    "outside_root": "outside the directories this key may use",
    "checksum_mismatch": "sha256 of the received data does not match",
    "io_error": "input/output error",
}



class FileTransferError(RemoteCommandError):
    """A file operation failed; `code` says how, `path` says where.

    The message is one line, `path: detail`, with a path holding control characters
    shown as a repr so it cannot forge extra lines in a log or terminal.
    """

    def __init__(self, code: str, path: str | os.PathLike[str], detail: str | None = None) -> None:
        if code not in CODES:
            raise ValueError(f"unknown file transfer code {code!r}")
        shown = _printable(os.fspath(path))
        super().__init__(f"{shown}: {detail or _DEFAULT_DETAIL[code]}", code=code)
        self.path = os.fspath(path)
        self.detail = detail or _DEFAULT_DETAIL[code]


def _printable(text: str) -> str:
    """Return text as is when printable, else its repr."""
    return text if text.isprintable() else repr(text)


def map_os_error(err: OSError, path: str | os.PathLike[str]) -> FileTransferError:
    """Translate an OSError raised while touching `path` into our error.

    A read-only filesystem counts as permission denied: for the user both mean
    "you may not write here". Errors without a specific code become io_error,
    keeping the system's own wording as the detail.
    """
    code = _ERRNO_CODES.get(err.errno or 0, "io_error")
    return FileTransferError(code, path, err.strerror.lower() if err.strerror else None)

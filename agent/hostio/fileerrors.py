"""File transfer errors: one exception whose `code` goes over the wire unchanged.

Both ends raise `FileTransferError`, a `RemoteCommandError` whose `code` is one of
the wire's `ErrorCode`s that `FILE_ERRORS` describes, and translate OSErrors into it with `map_os_error` at one boundary.
"""

from __future__ import annotations

import errno
import os

from shoal.protocol.errors import ErrorCode, RemoteCommandError

__all__ = ["FILE_ERRORS", "FileTransferError", "map_os_error"]

_ERRNO_CODES = {
    errno.ENOENT: ErrorCode.NOT_FOUND,
    errno.EACCES: ErrorCode.PERMISSION_DENIED,
    errno.EPERM: ErrorCode.PERMISSION_DENIED,
    errno.EROFS: ErrorCode.PERMISSION_DENIED,
    errno.ENOSPC: ErrorCode.NO_SPACE,
    errno.EDQUOT: ErrorCode.NO_SPACE,
    errno.EISDIR: ErrorCode.IS_DIRECTORY,
    errno.ENOTDIR: ErrorCode.NOT_DIRECTORY,
}

# The wire codes a transfer failure may carry, each with its default detail; the
# controller maps them to messages and exit statuses, so they are wire contract.
FILE_ERRORS: dict[ErrorCode, str] = {
    ErrorCode.BAD_PATH: "invalid path",
    ErrorCode.NOT_FOUND: "no such file or directory",
    ErrorCode.PERMISSION_DENIED: "permission denied",
    ErrorCode.NO_SPACE: "no space left on device",
    ErrorCode.IS_DIRECTORY: "is a directory",
    ErrorCode.NOT_DIRECTORY: "not a directory",
    ErrorCode.OUTSIDE_ROOT: "outside the directories this key may use",
    ErrorCode.CHECKSUM_MISMATCH: "sha256 of the received data does not match",
    ErrorCode.IO_ERROR: "input/output error",
}


class FileTransferError(RemoteCommandError):
    """A file operation failed; `code` says how, `path` says where.

    The message is one line, `path: detail`, with a path holding control characters
    shown as a repr so it cannot forge extra lines in a log or terminal.
    """

    def __init__(self, code: ErrorCode, path: str | os.PathLike[str], detail: str | None = None) -> None:
        if code not in FILE_ERRORS:
            raise ValueError(f"unknown file transfer code {code!r}")
        shown = _printable(os.fspath(path))
        super().__init__(f"{shown}: {detail or FILE_ERRORS[code]}", code=code)
        self.path = os.fspath(path)
        self.detail = detail or FILE_ERRORS[code]


def _printable(text: str) -> str:
    """Return text as is when printable, else its repr."""
    return text if text.isprintable() else repr(text)


def map_os_error(err: OSError, path: str | os.PathLike[str]) -> FileTransferError:
    """Translate an OSError raised while touching `path` into our error.

    A read-only filesystem counts as permission denied: for the user both mean
    "you may not write here". Errors without a specific code become io_error,
    keeping the system's own wording as the detail.
    """
    code = _ERRNO_CODES.get(err.errno or 0, ErrorCode.IO_ERROR)
    return FileTransferError(code, path, err.strerror.lower() if err.strerror else None)

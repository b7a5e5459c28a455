"""Which paths a transfer request may touch: `..` and symlinks resolved, then checked against the key's roots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from shoal.protocol.errors import ErrorCode
from shoal.hostio.fileerrors import FileTransferError
from shoal.hostio.files import LOCAL_FILES, Files

__all__ = ["resolve_path"]


def resolve_path(path: str, roots: Sequence[str] | None = None, files: Files = LOCAL_FILES) -> Path:
    """Return the real path a request names, refusing escapes from `roots`.

    Args:
        path: absolute path from the request. Relative paths are refused because
            the agent's cwd means nothing to the user on the controller.
        roots: directories this key may touch, or None for anywhere. An empty
            sequence allows nothing.
        files: whose rights resolve the links. A user's sees only the links it
            may look at: a path through a directory it cannot search stays as
            written, and opening it as that user then fails as `cat` would.

    Returns:
        The path with `..` and every symlink of its existing components resolved,
        so a link inside a root that points outside is caught. A trailing `/` is
        dropped; callers that give it meaning pass `into_dir` to `AtomicWriter.open`.

    Raises:
        FileTransferError: `bad_path` (relative, or holds a NUL byte) or
            `outside_root`.

    The check is only as strong as the filesystem is quiet: someone able to swap a
    directory for a symlink between this check and the open can still race it.
    """
    if "\0" in path:
        raise FileTransferError(ErrorCode.BAD_PATH, path, "path contains a NUL byte")
    if not os.path.isabs(path):
        raise FileTransferError(ErrorCode.BAD_PATH, path, "path must be absolute")
    real = Path(files.realpath(path))
    if roots is not None and not any(real.is_relative_to(os.path.realpath(root)) for root in roots):
        raise FileTransferError(ErrorCode.OUTSIDE_ROOT, path)
    return real

"""Field rules for requests, checked before the agent acts on one.

A body can be valid JSON with every member of the right type and still be
something no process or file can be made from: a NUL byte inside an argv
element, an environment key holding `=`, a lone surrogate that has no bytes, a
mode or owner the kernel rejects. `check_request` finds those and raises
BadRequestError naming the field, so the agent answers ERROR `bad_request` for
that request and the connection carries on.
"""

from __future__ import annotations

import math
import re
from typing import Any

from shoal.protocol.defaults import MAX_BATCH_BYTES, MAX_BATCH_FILES
from shoal.protocol.errors import BadRequestError
from shoal.protocol.messages import Exec, GetFile, ListTree, Message, PutBatch, PutFile, RelayOpen, RemovePaths

__all__ = [
    "check_request", "unknown_requirements", "TransferRequest", "EXEC_FEATURES", "TRANSFER_FEATURES",
    "MAX_IDLE_TIMEOUT", "MAX_KILL_GRACE", "MAX_MTIME", "MAX_SIZE", "MAX_USER",
]

# Fields this agent honours when a request names them in `requires`. Any other
# name is a field added after us that the controller needs honoured: we refuse
# with `unsupported` rather than act without it.
EXEC_FEATURES = frozenset({"user", "pty"})
TRANSFER_FEATURES = frozenset({"user"})
# Longest user name accepted (useradd's limit is 32; leave room for LDAP names).
MAX_USER = 256

# Longest grace a request may ask for between signals, in seconds: an hour is
# already far beyond any shutdown a command could need.
MAX_KILL_GRACE = 3600.0
# Longest a gateway may be asked to spend connecting a relay, in seconds.
MAX_CONNECT_TIMEOUT = 3600.0
# Longest silence an EXEC may allow, in seconds (30 days): past that nobody is
# waiting for the output, and the timer's arithmetic stays exact.
MAX_IDLE_TIMEOUT = 30 * 86400.0
# |mtime| in seconds from the epoch; beyond this (about year 2514) utime() overflows
# on some filesystems.
MAX_MTIME = float(2 ** 34)
# Largest file size or window in bytes: what an off_t can hold.
MAX_SIZE = 2 ** 63 - 1
# Highest uid or gid; 2**32 - 1 means "unchanged" to chown(2).
_MAX_ID = 2 ** 32 - 2


def check_request(msg: Message) -> None:
    """Raise BadRequestError if a request-opening message breaks a field rule."""
    if isinstance(msg, Exec):
        _check_exec(msg)
    elif isinstance(msg, PutFile):
        _check_put(msg)
    elif isinstance(msg, GetFile):
        _check_encodable("path", msg.path)
        _check_user(msg.user)
        _check_encodable("tree", msg.tree)
        _check_range("window", msg.window, 0, MAX_SIZE)
    elif isinstance(msg, ListTree):
        _check_encodable("path", msg.path)
        _check_user(msg.user)
    elif isinstance(msg, RemovePaths):
        _check_encodable("tree", msg.tree)
        for i, path in enumerate(msg.paths):
            _check_encodable(f"paths[{i}]", path)
        _check_user(msg.user)
    elif isinstance(msg, PutBatch):
        _check_batch(msg)
    elif isinstance(msg, RelayOpen):
        _check_relay(msg)


TransferRequest = PutFile | GetFile | ListTree | RemovePaths | PutBatch


def unknown_requirements(msg: Exec | TransferRequest) -> list[str]:
    """The names in a request's `requires` this agent cannot honour: the request must not run."""
    known = EXEC_FEATURES if isinstance(msg, Exec) else TRANSFER_FEATURES
    return sorted(set(msg.requires) - known)


def _check_exec(msg: Exec) -> None:
    for i, arg in enumerate(msg.argv or ()):
        _check_text(f"argv[{i}]", arg)
    if msg.shell is not None:
        _check_text("shell", msg.shell)
    for key, value in msg.env.items():
        if not key or "=" in key:
            raise BadRequestError(f"env key {key!r}", "must be non-empty and hold no '='")
        _check_text(f"env key {key!r}", key)
        _check_text(f"env[{key!r}]", value)
    if msg.cwd is not None:
        _check_text("cwd", msg.cwd)
    if msg.kill_grace is not None:
        _check_range("kill_grace", msg.kill_grace, 0, MAX_KILL_GRACE)
    if msg.idle_timeout is not None:
        _check_range("idle_timeout", msg.idle_timeout, 0, MAX_IDLE_TIMEOUT)
        if msg.idle_timeout == 0:
            raise BadRequestError("idle_timeout", "must be more than 0")
    _check_user(msg.user)
    if msg.pty:
        _check_range("rows", msg.rows, 0, 0xFFFF)
        _check_range("cols", msg.cols, 0, 0xFFFF)


def _check_relay(msg: RelayOpen) -> None:
    if msg.host is not None:
        if not msg.host or len(msg.host) > 255:
            raise BadRequestError("host", "must be a host name or address (1-255 characters)")
        _check_text("host", msg.host)
    if msg.path is not None:
        if not msg.path.startswith("/"):
            raise BadRequestError("path", "must be an absolute path")
        _check_text("path", msg.path)
    _check_range("window", msg.window, 0, MAX_SIZE)
    if msg.timeout is not None:
        _check_range("timeout", msg.timeout, 0, MAX_CONNECT_TIMEOUT)


def _check_user(user: str | None) -> None:
    if user is not None:
        if not user or len(user) > MAX_USER or "/" in user or ":" in user:
            raise BadRequestError("user", "must be a user name (1-256 characters, no '/' or ':')")
        _check_text("user", user)


def _check_put(msg: PutFile) -> None:
    _check_encodable("path", msg.path)  # a NUL byte is the file service's `bad_path`
    _check_encodable("name", msg.name)
    _check_user(msg.user)
    _check_encodable("tree", msg.tree)
    _check_range("size", msg.size, 0, MAX_SIZE)
    _check_range("window", msg.window, 0, MAX_SIZE)
    if msg.mode is not None:
        _check_range("mode", msg.mode, 0, 0o7777)
    if msg.mtime is not None:
        _check_range("mtime", msg.mtime, -MAX_MTIME, MAX_MTIME)
    if msg.owner is not None:
        _check_owner("owner", msg.owner)


_SHA256_HEX = re.compile(r"[0-9a-f]{64}\Z")


def _check_batch(msg: PutBatch) -> None:
    """PUT_BATCH: its size limits, then each entry's members as PUT_FILE's."""
    _check_encodable("tree", msg.tree)
    _check_user(msg.user)
    if len(msg.files) > MAX_BATCH_FILES:
        raise BadRequestError("files", f"holds {len(msg.files)} entries, more than {MAX_BATCH_FILES}")
    total = 0
    for i, entry in enumerate(msg.files):
        total += _check_batch_entry(f"files[{i}]", entry)
    if total > MAX_BATCH_BYTES:
        raise BadRequestError("files", f"sizes add up to {total} bytes, more than {MAX_BATCH_BYTES}")


def _check_batch_entry(name: str, entry: dict[str, Any]) -> int:
    """Check one batch entry; its size."""
    path, is_dir, size = entry.get("path"), entry.get("dir", False), entry.get("size", 0)
    if not isinstance(path, str):
        raise BadRequestError(f"{name}.path", "must be a string")
    _check_encodable(f"{name}.path", path)
    if not isinstance(is_dir, bool):
        raise BadRequestError(f"{name}.dir", "must be true or false")
    if not isinstance(size, int) or isinstance(size, bool):
        raise BadRequestError(f"{name}.size", "must be an integer")
    _check_range(f"{name}.size", size, 0, 0 if is_dir else MAX_SIZE)
    digest = entry.get("sha256", "")
    if not is_dir and not (isinstance(digest, str) and _SHA256_HEX.match(digest)):
        raise BadRequestError(f"{name}.sha256", "must be 64 lowercase hex digits")
    mode, mtime, owner = entry.get("mode"), entry.get("mtime"), entry.get("owner")
    if mode is not None:
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise BadRequestError(f"{name}.mode", "must be an integer or null")
        _check_range(f"{name}.mode", mode, 0, 0o7777)
    if mtime is not None:
        if not isinstance(mtime, (int, float)) or isinstance(mtime, bool):
            raise BadRequestError(f"{name}.mtime", "must be a number or null")
        _check_range(f"{name}.mtime", mtime, -MAX_MTIME, MAX_MTIME)
    if owner is not None:
        _check_owner(f"{name}.owner", owner)
    return size


def _check_owner(name: str, owner: Any) -> None:
    if not isinstance(owner, list) or len(owner) != 2 or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in owner):
        raise BadRequestError(name, "must be [uid, gid]")
    _check_range(f"{name}[0]", owner[0], 0, _MAX_ID)
    _check_range(f"{name}[1]", owner[1], 0, _MAX_ID)


def _check_text(field: str, text: str) -> None:
    """Text handed to the OS: no NUL byte, and bytes for every character."""
    if "\0" in text:
        raise BadRequestError(field, "contains a NUL byte")
    _check_encodable(field, text)


def _check_encodable(field: str, text: str) -> None:
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise BadRequestError(field, f"character {exc.start} has no bytes (lone surrogate)") from None


def _check_range(field: str, value: float, low: float, high: float) -> None:
    if isinstance(value, float) and not math.isfinite(value) or not low <= value <= high:
        shown = repr(value) if len(repr(value)) <= 24 else repr(value)[:20] + "..."
        raise BadRequestError(field, f"must be between {low:g} and {high:g}, not {shown}")

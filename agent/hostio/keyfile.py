"""Shared-key files: create them safely, load them only when nobody else can read them.

A key file is one line, `shoal-key-v1 <64 hex digits>\\n`. The version tag lets a
later format be told apart, and lets a wrong file (a TLS key, a public key) be
refused by name instead of being read as a secret.

Like ssh with private keys, we refuse a key file that group or others can read or
write: a key anyone on the host can copy authenticates anyone. No message ever
carries key bytes, or even the file's contents, since a garbled file may still
hold most of a key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import KEY_SIZE, SharedKey

__all__ = ["KEY_FILE_MAGIC", "write_key_file", "load_key_file", "format_key"]

KEY_FILE_MAGIC = "shoal-key-v1"
# Permission bits that let someone other than the owner read or write the file.
_OTHERS_RW = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
# A valid file is 78 bytes; reading a little more tells "too long" from "valid",
# and a cap keeps a mistaken path such as /dev/zero from being read forever.
_MAX_READ = 4096
_EXPECTED = f"expected one line '{KEY_FILE_MAGIC} <{2 * KEY_SIZE} hex digits>'"


def format_key(key: SharedKey) -> str:
    """Return the key file line for `key` (this is the secret: handle with care)."""
    if len(key.secret) != KEY_SIZE:
        raise ConfigError(f"the {KEY_FILE_MAGIC} format holds exactly {KEY_SIZE}-byte keys")
    return f"{KEY_FILE_MAGIC} {key.secret.hex()}\n"


def write_key_file(path: str | os.PathLike[str], key: SharedKey | None = None) -> SharedKey:
    """Create a new key file, readable by its owner only, and return its key.

    The content is written to a private temporary file first and then linked into
    place, so no reader ever sees a half-written key, and an existing file is
    never replaced (two racing writers: one wins, one gets an error).

    Args:
        path: the file to create; its directory must exist.
        key: the key to store; a fresh one when None.

    Raises:
        ConfigError: the file already exists, or cannot be created.
    """
    if key is None:
        key = SharedKey.generate()
    text = format_key(key).encode("ascii")
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    _write_private(tmp, text, target)
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise ConfigError("key file already exists; refusing to overwrite it", str(target)) from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file: {exc.strerror}", str(target)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _write_private(tmp: Path, text: bytes, target: Path) -> None:
    """Write `text` to a new file with mode 0600, flushed to disk."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot create key file: {exc.strerror}", str(target)) from exc
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, owner read/write and nothing else
        os.write(fd, text)
        os.fsync(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write key file: {exc.strerror}", str(target)) from exc
    finally:
        os.close(fd)


def load_key_file(path: str | os.PathLike[str]) -> SharedKey:
    """Read a key file, refusing one that others could read or tamper with.

    Raises:
        ConfigError: the file is missing, unreadable, accessible by others or not
            in the key file format; the message names the file, never its content.
    """
    where = os.fspath(path)
    try:
        fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError("no such key file", where) from None
    except OSError as exc:
        raise ConfigError(f"cannot open key file: {exc.strerror}", where) from None
    try:
        check_private(fd, where)
        data = _read_capped(fd, where)
    finally:
        os.close(fd)
    return _parse(data, where)


def check_private(fd: int, where: str, what: str = "key file") -> None:
    """Refuse anything but a regular file only its owner can read and write.

    Shared with the TLS private key: any secret an agent or controller loads gets
    the same rule, as ssh applies to its private keys.
    """
    # fstat on the open descriptor: the file we check is the file we read.
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} is not a regular file", where)
    if st.st_mode & _OTHERS_RW:
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(
            f"{what} is accessible by others (mode {mode:04o}); run chmod 600 {where}", where)


def _read_capped(fd: int, where: str) -> bytes:
    try:
        data = os.read(fd, _MAX_READ)
    except OSError as exc:
        raise ConfigError(f"cannot read key file: {exc.strerror}", where) from None
    if len(data) >= _MAX_READ:
        raise ConfigError(f"too large to be a key file ({_EXPECTED})", where)
    return data


def _parse(data: bytes, where: str) -> SharedKey:
    """Decode the one-line format; errors say what is wrong, not what was found."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"not a shoal key file: not ASCII text ({_EXPECTED})", f"{where}:1") from None
    lines = text.splitlines()
    if not lines:
        raise ConfigError(f"key file is empty ({_EXPECTED})", where)
    if len(lines) != 1:
        raise ConfigError(f"not a shoal key file: {len(lines)} lines ({_EXPECTED})", where)
    fields = lines[0].split()
    if len(fields) != 2 or fields[0] != KEY_FILE_MAGIC:
        raise ConfigError(f"not a shoal key file ({_EXPECTED})", f"{where}:1")
    digits = fields[1]
    if len(digits) != 2 * KEY_SIZE or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ConfigError(f"malformed key: {_EXPECTED}", f"{where}:1")
    return SharedKey(bytes.fromhex(digits))

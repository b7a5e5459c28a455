"""Refuse configuration, key and TLS files that someone else could have changed (ssh's StrictModes).

agent.toml says which keys run what; a key file is the authentication; the TLS
files decide whom TLS trusts. If another user can rewrite any of them, or replace
them by renaming in a directory on the way to them, that user owns the agent. So
the file, and every directory from it up to /, must belong to root or to the
agent's own user and must not be writable by group or others. A directory with the
sticky bit (/tmp) is accepted even when world-writable, since there others may add
entries but not rename or remove ours. Both the path as given and the path its
symbolic links lead to are checked.
"""

from __future__ import annotations

import os
import stat

from shoal.protocol.errors import ConfigError

from shoal.agent.config import TlsConfig

__all__ = ["check_path", "check_tls_files"]

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def check_path(path: str, what: str) -> None:
    """Raise ConfigError (where=path) if anyone but root or us could change `path`.

    A file that cannot be examined (missing, unreadable directory) is left to
    the loader, whose error says that more precisely.
    """
    trusted = {0, os.geteuid()}
    absolute = os.path.abspath(path)
    for chain in {absolute, os.path.realpath(absolute)}:
        try:
            _check_chain(chain, path, what, trusted)
        except OSError:
            return


def check_tls_files(tls: TlsConfig) -> None:
    """`check_path` for the certificate, private key and CA files."""
    for name in ("cert", "key", "ca"):
        check_path(getattr(tls, name), f"TLS {name} file")


def _check_chain(path: str, where: str, what: str, trusted: set[int]) -> None:
    st = os.stat(path)
    _check_owner(st, where, what, trusted)
    if st.st_mode & _OTHERS_WRITE:
        raise ConfigError(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"run chmod go-w {path}", where)
    directory = os.path.dirname(path)
    while True:
        st = os.stat(directory)
        _check_owner(st, where, f"directory {directory}", trusted)
        if st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
            raise ConfigError(f"directory {directory} is writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod go-w {directory}", where)
        if directory == "/":
            return
        directory = os.path.dirname(directory)


def _check_owner(st: os.stat_result, where: str, what: str, trusted: set[int]) -> None:
    if st.st_uid not in trusted:
        users = "root" if trusted == {0} else f"root or the agent's user (uid {os.geteuid()})"
        raise ConfigError(f"{what} is owned by uid {st.st_uid}, not {users}", where)

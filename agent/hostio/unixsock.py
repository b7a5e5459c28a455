"""Unix sockets: clear a socket file a dead server left (never one in use); who is at the other end."""

from __future__ import annotations

import os
import socket
import stat
import struct

from shoal.protocol.errors import ConfigError

__all__ = ["peer_uid", "remove_stale_socket"]

_SO_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def remove_stale_socket(path: str, option: str = "listen") -> None:
    """Remove a socket file left by a dead server; ConfigError (naming `option`) if one
    still serves there, or it is no socket."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"cannot listen on unix:{path}: a non-socket file is in the way", option)
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(f"cannot listen on unix:{path}: address already in use", option)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED),
    as the kernel recorded it when that end called connect or listen."""
    _, uid, _ = _SO_PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _SO_PEERCRED.size))
    return int(uid)

"""Unix socket files a server binds: clear one a dead server left, never one in use."""

from __future__ import annotations

import os
import socket
import stat

from shoal.protocol.errors import ConfigError

__all__ = ["remove_stale_socket"]


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

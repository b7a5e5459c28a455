"""Tell systemd how a service is doing (the sd_notify protocol), without libsystemd.

Both daemons use it, the agent and the hub. With `Type=notify` systemd considers
the service started only when it receives `READY=1`, so `systemctl start` returns
once the service really listens (and a client started next finds it), and a bind
failure shows up as a failed start rather than a crash a moment later. The
protocol is one datagram of `NAME=value` lines sent to the AF_UNIX socket named
in $NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

log = logging.getLogger("shoal.sdnotify")


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to systemd.

    Returns False when not started by systemd ($NOTIFY_SOCKET unset) or when the
    message could not be delivered; never raises, since a missing supervisor must
    not stop the service. A failed delivery is logged as a warning.
    """
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    if target.startswith("@"):
        address = "\0" + target[1:]
    elif target.startswith("/"):
        address = target
    else:
        log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying systemd", target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("cannot notify systemd through %s: %s", target, exc)
        return False
    return True

"""Why a connect failed, in the words both ends print: the controller dialling an
agent, and a gateway dialling a relay's destination, report it the same way."""

from __future__ import annotations

import socket

__all__ = ["connect_reason"]


def connect_reason(exc: OSError) -> str:
    """One line for a socket error raised while resolving or connecting."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__

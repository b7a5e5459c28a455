"""Why a connect or bind failed, in the words both ends print: the controller dialling an
agent, and a gateway dialling a relay's destination, report it the same way."""

from __future__ import annotations

import os
import socket

__all__ = ["bind_reason", "connect_reason"]


def connect_reason(exc: OSError) -> str:
    """One line for a socket error raised while resolving or connecting."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__


def bind_reason(exc: OSError) -> str:
    """One line for a socket error raised while binding: the errno's words alone
    (asyncio's own text also spells the address as a Python tuple). A host name that
    does not resolve carries a resolver code, not an errno: its own words then."""
    if isinstance(exc, socket.gaierror):
        return (exc.strerror or str(exc)).lower()
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return exc.strerror or str(exc) or type(exc).__name__

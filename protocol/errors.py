"""The one exception hierarchy of shoal, shared by protocol, agent and controller.

    ShoalError
    ├── ProtocolError                 the peer or we broke the wire rules
    │   ├── LocalProtocolError        we were asked to send something illegal
    │   └── RemoteProtocolError       the peer sent something illegal
    ├── ShoalConnectionError          could not reach, or lost, an agent
    ├── AuthError                     handshake failed, key mismatch, permission denied
    ├── RemoteCommandError            a command could not start or failed remotely
    ├── ConfigError                   bad configuration, inventory, key file or pattern
    └── ShoalTimeoutError             (also TimeoutError) a deadline passed

Errors carry fields and build their message from them, so a caller can act on the
host or code without parsing text.
"""

from __future__ import annotations

__all__ = [
    "ShoalError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "ShoalConnectionError",
    "AuthError",
    "RemoteCommandError",
    "ConfigError",
    "ShoalTimeoutError",
]


class ShoalError(Exception):
    """Root of every error shoal raises on purpose."""


class ProtocolError(ShoalError):
    """A wire rule was broken; `code` is the machine-readable error code."""

    def __init__(self, message: str, code: str = "bad_frame") -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; the connection is unusable."""


class ShoalConnectionError(ShoalError):
    """An agent could not be reached or the connection to it was lost."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class AuthError(ShoalError):
    """Authentication or authorization failed."""

    def __init__(self, reason: str, host: str | None = None, key_id: str | None = None) -> None:
        super().__init__(f"{host}: {reason}" if host else reason)
        self.host = host
        self.reason = reason
        self.key_id = key_id


class RemoteCommandError(ShoalError):
    """A remote command could not be started, or the agent refused it."""

    def __init__(self, reason: str, code: str = "error", host: str | None = None,
                 request_id: int | None = None, status: int | None = None) -> None:
        super().__init__(f"{host}: {reason}" if host else reason)
        self.reason = reason
        self.code = code
        self.host = host
        self.request_id = request_id
        self.status = status


class ConfigError(ShoalError):
    """Bad configuration; `where` is `path:line` or an option name when known."""

    def __init__(self, reason: str, where: str | None = None) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.where = where


class ShoalTimeoutError(ShoalError, TimeoutError):
    """A deadline passed (connect, handshake, command)."""

    def __init__(self, what: str, seconds: float, host: str | None = None) -> None:
        text = f"{what} timed out after {seconds:g}s"
        super().__init__(f"{host}: {text}" if host else text)
        self.what = what
        self.seconds = seconds
        self.host = host

"""The one exception hierarchy of shoal, shared by protocol, agent and controller.

    ShoalError
    ├── ProtocolError                 the peer or we broke the wire rules
    │   ├── LocalProtocolError        we were asked to send something illegal
    │   ├── RemoteProtocolError       the peer sent something illegal
    │   └── BadRequestError           one request's field breaks a rule (that request only)
    ├── ShoalConnectionError          could not reach, or lost, an agent
    ├── AuthError                     handshake failed, key mismatch, permission denied
    ├── RemoteCommandError            a command could not start or failed remotely
    ├── ConfigError                   bad configuration, inventory, key file or pattern
    └── ShoalTimeoutError             (also TimeoutError) a deadline passed

Errors carry fields and build their message from them, so a caller can act on the
host or code without parsing text.

`ERROR_CODES` is the one table of wire error codes (the `code` of an ERROR frame);
PROTOCOL.md prints the same table and a test keeps the two equal.
"""

from __future__ import annotations

__all__ = [
    "ShoalError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "BadRequestError",
    "ERROR_CODES",
    "REQUEST_SCOPE",
    "CONNECTION_SCOPE",
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


class BadRequestError(ProtocolError):
    """A well-formed request whose `field` breaks a validation rule; only it is refused."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", "bad_request")
        self.field = field
        self.reason = reason


REQUEST_SCOPE = "request"
CONNECTION_SCOPE = "connection"

# code -> (scope, meaning). Request-scope errors end that request only, under its
# id; connection-scope errors are sent under request id 0 and the sender closes.
ERROR_CODES: dict[str, tuple[str, str]] = {
    "not_found": (REQUEST_SCOPE, "command not found (status 127), or a transfer path that does not exist or vanished while it was resolved"),
    "not_executable": (REQUEST_SCOPE, "the command is not executable (status 126)"),
    "bad_cwd": (REQUEST_SCOPE, "the working directory does not exist or cannot be entered (status 126)"),
    "exec_failed": (REQUEST_SCOPE, "the command could not be started for another reason (status 126)"),
    "empty_command": (REQUEST_SCOPE, "empty argv, empty first word or blank shell string (status 2)"),
    "bad_request": (REQUEST_SCOPE, "a field of EXEC, PUT_FILE or GET_FILE breaks a validation rule (section 3, Validation); the message names the field"),
    "bad_path": (REQUEST_SCOPE, "transfer path relative, holding a NUL byte, or a bad `name`"),
    "outside_root": (REQUEST_SCOPE, "transfer path resolves outside the key's file roots"),
    "no_space": (REQUEST_SCOPE, "not enough free space for the put"),
    "is_directory": (REQUEST_SCOPE, "a file was expected, a directory found"),
    "not_directory": (REQUEST_SCOPE, "a directory was expected, something else found"),
    "checksum_mismatch": (REQUEST_SCOPE, "the put's size or sha256 does not match what arrived"),
    "io_error": (REQUEST_SCOPE, "the filesystem failed the transfer (or a FIFO/device was named)"),
    "permission_denied": (REQUEST_SCOPE, "the key's policy, or the filesystem, forbids this request, "
                                         "or the key was revoked"),
    "audit_unavailable": (REQUEST_SCOPE, "the agent requires an audit record and cannot write one; nothing ran"),
    "limit": (REQUEST_SCOPE, "a concurrency limit of the agent was reached"),
    "duplicate_request": (REQUEST_SCOPE, "the request id is already in use on this connection"),
    "unknown_request": (REQUEST_SCOPE, "no open request has this id"),
    "unsupported": (REQUEST_SCOPE, "the receiver knows the message type but does not handle it"),
    "bad_frame": (CONNECTION_SCOPE, "a frame length is impossible, or a tagged frame cannot hold its tag"),
    "frame_too_large": (CONNECTION_SCOPE, "a frame body exceeds the receiver's limit"),
    "truncated": (CONNECTION_SCOPE, "end of stream in the middle of a frame"),
    "bad_message": (CONNECTION_SCOPE, "a body is not the JSON object its type requires: invalid UTF-8 or JSON, a member of the wrong type, a duplicate member, NaN or Infinity, nesting deeper than 32, or a request id that is 0 where it must not be (or not 0 where it must)"),
    "unknown_type": (CONNECTION_SCOPE, "the frame type byte names no message"),
    "out_of_order": (CONNECTION_SCOPE, "a message not legal in the connection's or request's current state"),
    "wrong_direction": (CONNECTION_SCOPE, "a message type the sender's role never sends (e.g. STDOUT from a controller)"),
    "bad_hello": (CONNECTION_SCOPE, "a HELLO with a wrong role, no valid nonce, or no frame MAC in common"),
    "version": (CONNECTION_SCOPE, "protocol version not supported"),
    "bad_mac": (CONNECTION_SCOPE, "a frame failed its MAC check"),
    "window_exceeded": (CONNECTION_SCOPE, "the sender overran a flow-control window"),
    "auth_failed": (CONNECTION_SCOPE, "authentication failed, or the sides disagree about using a key"),
    "too_many_connections": (CONNECTION_SCOPE, "the agent's connection limit was reached; sent instead of HELLO"),
    "protocol_error": (CONNECTION_SCOPE, "the controller found the agent breaking the protocol in a way no narrower code names"),
    "internal": (CONNECTION_SCOPE, "a bug in the agent itself, never a verdict on the peer's input; logged with its traceback. A bug inside one transfer ends only that request, under its id"),
}


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

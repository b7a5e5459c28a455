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

`ErrorCode` names every wire error code (the `code` of an ERROR frame) and
`ERROR_CODES` gives each its scope and meaning; PROTOCOL.md prints the same table
and a test keeps the two equal. Code everywhere spells a code as `ErrorCode.X`.
"""

from __future__ import annotations

import enum

__all__ = [
    "ShoalError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "BadRequestError",
    "ErrorCode",
    "ERROR_CODES",
    "REQUEST_SCOPE",
    "CONNECTION_SCOPE",
    "ShoalConnectionError",
    "AuthError",
    "RemoteCommandError",
    "ConfigError",
    "ShoalTimeoutError",
]


class ErrorCode(enum.StrEnum):
    """The `code` of an ERROR frame; a `str`, so the wire spells it as before."""

    NOT_FOUND = "not_found"
    NOT_EXECUTABLE = "not_executable"
    BAD_CWD = "bad_cwd"
    EXEC_FAILED = "exec_failed"
    EMPTY_COMMAND = "empty_command"
    BAD_REQUEST = "bad_request"
    BAD_PATH = "bad_path"
    OUTSIDE_ROOT = "outside_root"
    NO_SPACE = "no_space"
    IS_DIRECTORY = "is_directory"
    NOT_DIRECTORY = "not_directory"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    IO_ERROR = "io_error"
    PERMISSION_DENIED = "permission_denied"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    LIMIT = "limit"
    DUPLICATE_REQUEST = "duplicate_request"
    UNKNOWN_REQUEST = "unknown_request"
    UNSUPPORTED = "unsupported"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_HOST = "unknown_host"
    RELAY_FAILED = "relay_failed"
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED = "truncated"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    OUT_OF_ORDER = "out_of_order"
    WRONG_DIRECTION = "wrong_direction"
    BAD_HELLO = "bad_hello"
    VERSION = "version"
    BAD_MAC = "bad_mac"
    WINDOW_EXCEEDED = "window_exceeded"
    AUTH_FAILED = "auth_failed"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    NAME_IN_USE = "name_in_use"
    PROTOCOL_ERROR = "protocol_error"
    INTERNAL = "internal"


class ShoalError(Exception):
    """Root of every error shoal raises on purpose."""


class ProtocolError(ShoalError):
    """A wire rule was broken; `code` is the machine-readable error code."""

    def __init__(self, message: str, code: str = ErrorCode.BAD_FRAME) -> None:
        super().__init__(message)
        self.code = code


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; the connection is unusable."""


class BadRequestError(ProtocolError):
    """A well-formed request whose `field` breaks a validation rule; only it is refused."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", ErrorCode.BAD_REQUEST)
        self.field = field
        self.reason = reason


REQUEST_SCOPE = "request"
CONNECTION_SCOPE = "connection"

# code -> (scope, meaning). Request-scope errors end that request only, under its
# id; connection-scope errors are sent under request id 0 and the sender closes.
ERROR_CODES: dict[ErrorCode, tuple[str, str]] = {
    ErrorCode.NOT_FOUND: (REQUEST_SCOPE, "command not found (status 127), or a transfer path that does not exist or vanished while it was resolved"),
    ErrorCode.NOT_EXECUTABLE: (REQUEST_SCOPE, "the command is not executable (status 126)"),
    ErrorCode.BAD_CWD: (REQUEST_SCOPE, "the working directory does not exist or cannot be entered (status 126)"),
    ErrorCode.EXEC_FAILED: (REQUEST_SCOPE, "the command could not be started for another reason (status 126)"),
    ErrorCode.EMPTY_COMMAND: (REQUEST_SCOPE, "empty argv, empty first word or blank shell string (status 2)"),
    ErrorCode.BAD_REQUEST: (REQUEST_SCOPE, "a field of EXEC, PUT_FILE or GET_FILE breaks a validation rule (section 3, Validation); the message names the field; or, on a hub's link, the request is larger than the agent's frame limit"),
    ErrorCode.BAD_PATH: (REQUEST_SCOPE, "transfer path relative, holding a NUL byte, or a bad `name`"),
    ErrorCode.OUTSIDE_ROOT: (REQUEST_SCOPE, "transfer path resolves outside the key's file roots"),
    ErrorCode.NO_SPACE: (REQUEST_SCOPE, "not enough free space for the put"),
    ErrorCode.IS_DIRECTORY: (REQUEST_SCOPE, "a file was expected, a directory found"),
    ErrorCode.NOT_DIRECTORY: (REQUEST_SCOPE, "a directory was expected, something else found"),
    ErrorCode.CHECKSUM_MISMATCH: (REQUEST_SCOPE, "the put's size or sha256 does not match what arrived"),
    ErrorCode.IO_ERROR: (REQUEST_SCOPE, "the filesystem failed the transfer (or a FIFO/device was named)"),
    ErrorCode.PERMISSION_DENIED: (REQUEST_SCOPE, "the key's policy, or the filesystem, forbids this request, "
                                         "or the key was revoked"),
    ErrorCode.AUDIT_UNAVAILABLE: (REQUEST_SCOPE, "the agent requires an audit record and cannot write one; nothing ran"),
    ErrorCode.LIMIT: (REQUEST_SCOPE, "a concurrency limit of the agent was reached"),
    ErrorCode.DUPLICATE_REQUEST: (REQUEST_SCOPE, "the request id is already in use on this connection"),
    ErrorCode.UNKNOWN_REQUEST: (REQUEST_SCOPE, "no open request has this id"),
    ErrorCode.UNSUPPORTED: (REQUEST_SCOPE, "the receiver knows the message type but does not handle it"),
    ErrorCode.UNKNOWN_JOB: (REQUEST_SCOPE, "no job with this id that this key may see (never started, expired, or another key's; status 255)"),
    ErrorCode.UNKNOWN_HOST: (REQUEST_SCOPE, "a hub has no agent of that name connected (LINK_OPEN); status 255"),
    ErrorCode.RELAY_FAILED: (REQUEST_SCOPE, "a gateway could not connect to a relay's destination (refused, unreachable, "
                                            "timed out, unknown name); the message says why; status 255"),
    ErrorCode.BAD_FRAME: (CONNECTION_SCOPE, "a frame length is impossible, or a tagged frame cannot hold its tag"),
    ErrorCode.FRAME_TOO_LARGE: (CONNECTION_SCOPE, "a frame body exceeds the receiver's limit"),
    ErrorCode.TRUNCATED: (CONNECTION_SCOPE, "end of stream in the middle of a frame"),
    ErrorCode.BAD_MESSAGE: (CONNECTION_SCOPE, "a body is not the JSON object its type requires: invalid UTF-8 or JSON, a member of the wrong type, a duplicate member, NaN or Infinity, nesting deeper than 32, or a request id that is 0 where it must not be (or not 0 where it must)"),
    ErrorCode.UNKNOWN_TYPE: (CONNECTION_SCOPE, "the frame type byte names no message"),
    ErrorCode.OUT_OF_ORDER: (CONNECTION_SCOPE, "a message not legal in the connection's or request's current state"),
    ErrorCode.WRONG_DIRECTION: (CONNECTION_SCOPE, "a message type the sender's role never sends (e.g. STDOUT from a controller)"),
    ErrorCode.BAD_HELLO: (CONNECTION_SCOPE, "a HELLO with a wrong role, no valid nonce, or no frame MAC in common"),
    ErrorCode.VERSION: (CONNECTION_SCOPE, "protocol version not supported"),
    ErrorCode.BAD_MAC: (CONNECTION_SCOPE, "a frame failed its MAC check"),
    ErrorCode.WINDOW_EXCEEDED: (CONNECTION_SCOPE, "the sender overran a flow-control window"),
    ErrorCode.AUTH_FAILED: (CONNECTION_SCOPE, "authentication failed, or the sides disagree about using a key"),
    ErrorCode.TOO_MANY_CONNECTIONS: (CONNECTION_SCOPE, "the agent's connection limit was reached; sent instead of HELLO"),
    ErrorCode.NAME_IN_USE: (CONNECTION_SCOPE, "a hub already has an agent connected under the name this one announced; "
                                              "it retries later, and gets the name once the other is gone"),
    ErrorCode.PROTOCOL_ERROR: (CONNECTION_SCOPE, "the controller found the agent breaking the protocol in a way no narrower code names"),
    ErrorCode.INTERNAL: (CONNECTION_SCOPE, "a bug in the agent itself, never a verdict on the peer's input; logged with its traceback. A bug inside one transfer ends only that request, under its id"),
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

"""The type byte, the base class, and the connection-level messages (handshake,
errors, keepalive, goodbye) every connection speaks before and beside its requests.
"""

from __future__ import annotations

import math
from enum import IntEnum
from typing import ClassVar

from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.messageclass import field, message

__all__ = ["PROTOCOL_VERSION", "MessageType", "Message", "check_timeout_and_window",
           "AGENT_FEATURES", "Hello", "Auth", "Error", "Ping", "Pong", "Goodbye"]


PROTOCOL_VERSION = 1


class MessageType(IntEnum):
    """The type byte of a frame."""

    HELLO = 0x01
    AUTH = 0x02
    ERROR = 0x03
    PING = 0x04
    PONG = 0x05
    GOODBYE = 0x06
    EXEC = 0x10
    STDIN = 0x11
    STDIN_EOF = 0x12
    SIGNAL = 0x13
    CANCEL = 0x14
    WINDOW = 0x15
    RESIZE = 0x16
    STARTED = 0x20
    STDOUT = 0x21
    STDERR = 0x22
    EXIT = 0x23
    JOB_STARTED = 0x24
    METRICS_REQUEST = 0x30
    METRICS_REPLY = 0x31
    PUT_FILE = 0x40
    GET_FILE = 0x41
    FILE_INFO = 0x42
    FILE_DATA = 0x43
    FILE_END = 0x44
    FILE_DONE = 0x45
    LIST_TREE = 0x46
    TREE_ENTRIES = 0x47
    REMOVE_PATHS = 0x48
    REMOVED = 0x49
    PUT_BATCH = 0x4A
    BATCH_DONE = 0x4B
    JOBS_LIST = 0x50
    JOBS_REPLY = 0x51
    JOB_ATTACH = 0x52
    JOB_KILL = 0x53
    JOB_KILLED = 0x54
    # -- a hub's local socket (issue 20): requests to agents multiplexed over links
    LINK_OPEN = 0x70
    LINK_OPENED = 0x71
    LINKED = 0x72
    LINK_CLOSE = 0x73
    HOSTS_LIST = 0x74
    HOSTS_REPLY = 0x75
    PING_LINKS = 0x76
    LINK_PONGS = 0x77
    # -- relays (issue 19): a byte stream to another agent through this one
    RELAY_OPEN = 0x60
    RELAY_OPENED = 0x61
    RELAY_DATA = 0x62
    RELAY_CLOSE = 0x63


def bad_message(message: str) -> RemoteProtocolError:
    """A peer's message that breaks its type's rules: the connection's `bad_message` error."""
    return RemoteProtocolError(message, ErrorCode.BAD_MESSAGE)


@message
class Message:
    """Base of every message; `request_id` 0 means the connection itself."""

    TYPE: ClassVar[MessageType]
    RAW: ClassVar[bool] = False
    request_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, int) or not 0 <= self.request_id <= 0xFFFFFFFF:
            raise LocalProtocolError(f"bad request id {self.request_id!r}")
        self._validate()

    def _validate(self) -> None:
        """Per-message checks beyond field types; raise LocalProtocolError."""


def check_finite(name: str, value: float) -> None:
    """A time that JSON can carry back and a float can hold: 1e400 decodes to infinity,
    which no body may hold, and an integer of 400 digits is no time either."""
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond any float
        finite = False
    if not finite:
        raise LocalProtocolError(f"bad {name} {value!r:.40}")


def check_timeout_and_window(timeout: float | None, window: int) -> None:
    """A timeout is positive and finite (or absent); a window is not negative (0: the default)."""
    if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
        raise LocalProtocolError(f"bad timeout {timeout!r}")
    if window < 0:
        raise LocalProtocolError(f"bad window {window!r}")


# -- connection level --------------------------------------------------------


# What this agent honours beyond version 1, named in its HELLO `features`:
# "idle_timeout" is EXEC's `idle_timeout` (and EXIT's `idle_timed_out`); "put_batch"
# the PUT_BATCH request; "tree_user" LIST_TREE's and REMOVE_PATHS' `user` and
# `requires`; "relay" the RELAY_* messages: this agent can be a gateway (issue 19).
# The agent's HELLO adds the `requires` names it honours ("user", "pty"; issue 17),
# which its session passes to the Connection: one `features` list holds both.
AGENT_FEATURES = ("idle_timeout", "put_batch", "relay", "tree_user")


@message
class Hello(Message):
    """First frame from each side: version, role, authentication offer."""

    TYPE = MessageType.HELLO
    protocol: int = PROTOCOL_VERSION
    role: str = "controller"
    software: str = "shoal"
    auth: str = "none"
    key_id: str = ""
    nonce: str = ""
    max_frame: int = 0
    # Frame MAC negotiation: the controller offers `macs` in its order of
    # preference (absent: an older peer, which speaks only hmac-sha256); the agent
    # answers with its choice in `mac` (absent: hmac-sha256).
    macs: list[str] = field(default_factory=lambda: ["hmac-sha256"])
    mac: str = ""
    # Request members beyond version 1 this end honours (absent: none). The agent lists
    # AGENT_FEATURES plus the `requires` names it honours (issue 17: "user", "pty";
    # shoal.protocol.fields.EXEC_FEATURES). Unknown members are ignored, so a controller
    # must not send one the agent did not list: an older agent would run the command
    # without it.
    features: list[str] = field(default_factory=list)
    # Agent, when it dialled in to a hub (issue 20): the name it is known by there.
    # Inside the transcript, so the proofs cover it. Empty otherwise.
    name: str = ""

    def _validate(self) -> None:
        if self.role not in ("controller", "agent"):
            raise LocalProtocolError(f"bad role {self.role!r}")
        if self.auth not in ("none", "hmac-sha256"):
            raise LocalProtocolError(f"unknown auth scheme {self.auth!r}")


@message
class Auth(Message):
    """Proof of key possession over the handshake transcript (hex)."""

    TYPE = MessageType.AUTH
    proof: str = ""


@message
class Error(Message):
    """A machine-readable `code` and a one-line human `message`."""

    TYPE = MessageType.ERROR
    code: str = "error"
    message: str = ""
    status: int | None = None


@message
class Ping(Message):
    """Keepalive and clock probe; `t0` is the sender's clock at send time."""

    TYPE = MessageType.PING
    t0: float = 0.0

    def _validate(self) -> None:
        check_finite("t0", self.t0)


@message
class Pong(Message):
    """Answer to a ping: echoes t0, adds receive (t1) and send (t2) times."""

    TYPE = MessageType.PONG
    t0: float = 0.0
    t1: float = 0.0
    t2: float = 0.0
    version: str = ""

    def _validate(self) -> None:
        for name in ("t0", "t1", "t2"):
            check_finite(name, getattr(self, name))


@message
class Goodbye(Message):
    """The sender is closing the connection on purpose (shutdown, idle, limit)."""

    TYPE = MessageType.GOODBYE
    reason: str = ""

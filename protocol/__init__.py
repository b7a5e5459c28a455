"""shoal's wire protocol, sans I/O: bytes in, typed messages out, and back.

Drivers own the sockets; this package only parses and produces bytes. See
PROTOCOL.md in this directory for the byte-level specification.
"""

from shoal.protocol.connection import Connection, HandshakeComplete, KeyLookup, Role, State
from shoal.protocol.errors import (
    ERROR_CODES,
    AuthError,
    ErrorCode,
    BadRequestError,
    ConfigError,
    LocalProtocolError,
    ProtocolError,
    RemoteCommandError,
    RemoteProtocolError,
    ShoalConnectionError,
    ShoalError,
    ShoalTimeoutError,
)
from shoal.protocol.frames import DEFAULT_MAX_FRAME_SIZE, FrameDecoder
from shoal.protocol.handshake import SharedKey
from shoal.protocol.messages import MESSAGE_CLASSES, PROTOCOL_VERSION, Message, MessageType
from shoal.protocol.request import RequestChannel, RequestState

__all__ = [
    "AuthError",
    "BadRequestError",
    "ERROR_CODES",
    "ConfigError",
    "ErrorCode",
    "Connection",
    "DEFAULT_MAX_FRAME_SIZE",
    "FrameDecoder",
    "HandshakeComplete",
    "KeyLookup",
    "LocalProtocolError",
    "MESSAGE_CLASSES",
    "Message",
    "MessageType",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "RemoteCommandError",
    "RemoteProtocolError",
    "RequestChannel",
    "RequestState",
    "Role",
    "SharedKey",
    "ShoalConnectionError",
    "ShoalError",
    "ShoalTimeoutError",
    "State",
]

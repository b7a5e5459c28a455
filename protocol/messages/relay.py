"""Relays (issue 19): a byte stream from the controller to another agent (the target)
through this one (the gateway).

The gateway forwards the stream's bytes and nothing else: the controller runs its
own handshake with the target inside it, so every frame MAC (and TLS, if used) is
end to end. Lifecycle and windows: shoal.protocol.request (RequestKind.RELAY);
PROTOCOL.md section 3, Relays.
"""

from __future__ import annotations

from shoal.protocol.errors import LocalProtocolError
from shoal.protocol.messageclass import message
from shoal.protocol.messages.core import Message, MessageType, check_timeout_and_window

__all__ = ["RelayOpen", "RelayOpened", "RelayData", "RelayClose"]


@message
class RelayOpen(Message):
    """Open a stream to `host`:`port` (or the unix socket `path`) from the gateway.

    `window` is how many RELAY_DATA bytes the gateway may send before a WINDOW
    (0: RELAY_WINDOW); `timeout` bounds the gateway's connect (null: its own).
    """

    TYPE = MessageType.RELAY_OPEN
    host: str | None = None
    port: int = 0
    path: str | None = None
    window: int = 0
    timeout: float | None = None

    def _validate(self) -> None:
        if (self.host is None) == (self.path is None):
            raise LocalProtocolError("relay open needs exactly one of host and path")
        if self.host is not None and not 0 < self.port < 65536:
            raise LocalProtocolError(f"bad relay port {self.port!r}")
        check_timeout_and_window(self.timeout, self.window)


@message
class RelayOpened(Message):
    """The gateway is connected to the destination (`address`, as it reached it);
    the controller may send `window` RELAY_DATA bytes before a WINDOW (0: RELAY_WINDOW)."""

    TYPE = MessageType.RELAY_OPENED
    window: int = 0
    address: str = ""

    def _validate(self) -> None:
        check_timeout_and_window(None, self.window)


@message
class RelayData(Message):
    """Bytes of the relayed stream, forwarded unchanged."""

    TYPE = MessageType.RELAY_DATA
    RAW = True
    data: bytes = b""


@message
class RelayClose(Message):
    """The stream is over: the gateway closes its connection to the destination.

    From the gateway, `reason` is empty when the destination closed normally,
    else why the connection ended.
    """

    TYPE = MessageType.RELAY_CLOSE
    reason: str = ""

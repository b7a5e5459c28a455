"""One relayed stream's life, as both ends see it: its states, one table, its windows.

A relay (PROTOCOL.md §3 Relays) is a byte stream the controller asks an agent, the
gateway, to open to another agent. Both ends keep a `RelayChannel` per stream and
step it with every message sent or received under the stream's request id, as
they do a command request's `RequestChannel`:

    IDLE ──RELAY_OPEN──▶ OPENING ──RELAY_OPENED──▶ OPEN ──RELAY_CLOSE (either)──▶ DONE
                            └──ERROR (gateway), RELAY_CLOSE (controller)──────────▶ DONE

`TRANSITIONS` is the one table (`shoal.protocol.channel.Channel` steps it, as it
steps a command request's). RELAY_EOF ends one direction: after it its sender
may send no more RELAY_DATA or RELAY_EOF (`out_of_order`), the other direction
carries on.

Windows, the same numbers on both ends: RELAY_OPEN's `window` is what the gateway
may send (`gateway_credit`), RELAY_OPENED's what the controller may send
(`controller_credit`); 0 means RELAY_WINDOW. Each WINDOW grants its receiver more.
RELAY_DATA past its sender's credit is `window_exceeded`.
"""

from __future__ import annotations

from enum import Enum

from shoal.protocol.channel import Channel
from shoal.protocol.connection import Role
from shoal.protocol.defaults import RELAY_WINDOW
from shoal.protocol.errors import ErrorCode, ProtocolError
from shoal.protocol.messages import Message, MessageType, RelayOpen, RelayOpened

__all__ = ["RelayState", "RelayChannel", "TRANSITIONS"]


class RelayState(Enum):
    IDLE = "idle"  # nothing sent yet
    OPENING = "opening"  # RELAY_OPEN sent: the gateway checks its policy and connects
    OPEN = "open"  # RELAY_OPENED: bytes flow both ways
    DONE = "done"  # RELAY_CLOSE either way, or the gateway's ERROR: the id is forgotten


_S = RelayState
_T = MessageType
_FLOW = {_T.RELAY_DATA: _S.OPEN, _T.WINDOW: _S.OPEN, _T.RELAY_EOF: _S.OPEN, _T.RELAY_CLOSE: _S.DONE}

TRANSITIONS: dict[tuple[RelayState, Role], dict[MessageType, RelayState]] = {
    (_S.IDLE, Role.CONTROLLER): {_T.RELAY_OPEN: _S.OPENING},
    (_S.IDLE, Role.AGENT): {},
    (_S.OPENING, Role.CONTROLLER): {_T.RELAY_CLOSE: _S.DONE},
    (_S.OPENING, Role.AGENT): {_T.RELAY_OPENED: _S.OPEN, _T.ERROR: _S.DONE},
    (_S.OPEN, Role.CONTROLLER): dict(_FLOW),
    (_S.OPEN, Role.AGENT): dict(_FLOW),
    (_S.DONE, Role.CONTROLLER): {},
    (_S.DONE, Role.AGENT): {},
}


class RelayChannel(Channel):
    """The sans-I/O state of one relayed stream at one end (`Channel`'s stepping).

    Per sending role: `window` it was given, `credit` it may still send, and whether
    it sent RELAY_EOF (`eof`).
    """

    __slots__ = ("window", "credit", "eof")

    TABLE = TRANSITIONS  # type: ignore[assignment]
    START, END, NOUN = RelayState.IDLE, RelayState.DONE, "relay"

    def __init__(self, our_role: Role, request_id: int) -> None:
        super().__init__(our_role, request_id)
        self.window = {Role.CONTROLLER: 0, Role.AGENT: 0}
        self.credit = {Role.CONTROLLER: 0, Role.AGENT: 0}
        self.eof = {Role.CONTROLLER: False, Role.AGENT: False}

    @property
    def send_credit(self) -> int:
        """RELAY_DATA bytes we may send now."""
        return self.credit[self.our_role]

    def _refused(self, sender: Role, type_: MessageType) -> str:
        return "after its RELAY_EOF" if self.eof[sender] and type_ in (_T.RELAY_DATA, _T.RELAY_EOF) else ""

    def _account(self, sender: Role, type_: MessageType, amount: int, error: type[ProtocolError]) -> None:
        """Move the windows and half closes for one legal message."""
        other = Role.AGENT if sender is Role.CONTROLLER else Role.CONTROLLER
        if type_ is _T.RELAY_DATA:
            if amount > self.credit[sender]:
                raise error(f"relay {self.request_id}: data from the {sender.value} overran its window",
                            ErrorCode.WINDOW_EXCEEDED)
            self.credit[sender] -= amount
        elif type_ is _T.WINDOW:
            self.credit[other] += amount
        elif type_ is _T.RELAY_EOF:
            self.eof[sender] = True
        elif type_ is _T.RELAY_OPEN or type_ is _T.RELAY_OPENED:
            # An open grants the other side its first window.
            self.window[other] = self.credit[other] = amount or RELAY_WINDOW

    @staticmethod
    def _amount(msg: Message) -> int:
        """The one number a message moves a window by: payload, grant or an open's window."""
        if isinstance(msg, (RelayOpen, RelayOpened)):
            return msg.window
        return Channel._amount(msg)

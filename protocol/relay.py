"""One relayed stream's life, as both ends see it: its states, one table, its windows.

A relay (PROTOCOL.md §3 Relays) is a byte stream the controller asks an agent, the
gateway, to open to another agent. Both ends keep a `RelayChannel` per stream and
step it with every message sent or received under the stream's request id, as
they do a command request's `RequestChannel`:

    IDLE ──RELAY_OPEN──▶ OPENING ──RELAY_OPENED──▶ OPEN ──RELAY_CLOSE (either)──▶ DONE
                            └──ERROR (gateway), RELAY_CLOSE (controller)──────────▶ DONE

`TRANSITIONS` is the one table. RELAY_EOF ends one direction: after it its sender
may send no more RELAY_DATA or RELAY_EOF (`out_of_order`), the other direction
carries on.

Windows, the same numbers on both ends: RELAY_OPEN's `window` is what the gateway
may send (`gateway_credit`), RELAY_OPENED's what the controller may send
(`controller_credit`); 0 means RELAY_WINDOW. Each WINDOW grants its receiver more.
RELAY_DATA past its sender's credit is `window_exceeded`.
"""

from __future__ import annotations

from enum import Enum

from shoal.protocol.connection import Role
from shoal.protocol.defaults import RELAY_WINDOW
from shoal.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from shoal.protocol.messages import Message, MessageType, RelayOpen, RelayOpened, Window

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


class RelayChannel:
    """The sans-I/O state of one relayed stream at one end.

    Call `send` before a message of ours goes out and `receive` for each message the
    peer sent under the stream's id; `*_data` do the same with a type and the one
    number it moves a window by (payload bytes, a grant, an open's window).

    Args:
        our_role: which end keeps this channel.
        request_id: the stream's id, for error messages.
    """

    __slots__ = ("our_role", "their_role", "request_id", "state", "window", "credit", "eof")

    def __init__(self, our_role: Role, request_id: int) -> None:
        self.our_role = our_role
        self.their_role = Role.AGENT if our_role is Role.CONTROLLER else Role.CONTROLLER
        self.request_id = request_id
        self.state = RelayState.IDLE
        # Per sending role: the window it was given, what it may still send, whether it sent RELAY_EOF.
        self.window = {Role.CONTROLLER: 0, Role.AGENT: 0}
        self.credit = {Role.CONTROLLER: 0, Role.AGENT: 0}
        self.eof = {Role.CONTROLLER: False, Role.AGENT: False}

    @property
    def done(self) -> bool:
        return self.state is RelayState.DONE

    @property
    def send_credit(self) -> int:
        """RELAY_DATA bytes we may send now."""
        return self.credit[self.our_role]

    def can_send(self, type_: MessageType) -> bool:
        """Whether the table (and our half close) lets us send `type_` now."""
        return type_ in TRANSITIONS[(self.state, self.our_role)] and not (
            self.eof[self.our_role] and type_ in (_T.RELAY_DATA, _T.RELAY_EOF))

    def send(self, msg: Message) -> None:
        """Step for a message of ours. Raises LocalProtocolError if we may not send it."""
        self._step(self.our_role, msg.TYPE, _amount(msg), LocalProtocolError)

    def receive(self, msg: Message) -> None:
        """Step for the peer's message. Raises RemoteProtocolError (`out_of_order`,
        `window_exceeded`): the connection must fail with that code."""
        self._step(self.their_role, msg.TYPE, _amount(msg), RemoteProtocolError)

    def send_data(self, type_: MessageType, amount: int) -> None:
        """`send` without a message object (RELAY_DATA's payload size, WINDOW's grant)."""
        self._step(self.our_role, type_, amount, LocalProtocolError)

    def receive_data(self, type_: MessageType, amount: int) -> None:
        """`receive` without a message object, as `send_data`."""
        self._step(self.their_role, type_, amount, RemoteProtocolError)

    def connection_lost(self) -> None:
        """The connection carrying the stream is gone: nothing more either way."""
        self.state = RelayState.DONE

    def _step(self, sender: Role, type_: MessageType, amount: int, error: type[ProtocolError]) -> None:
        after = TRANSITIONS[(self.state, sender)].get(type_)
        if after is None or self.eof[sender] and type_ in (_T.RELAY_DATA, _T.RELAY_EOF):
            raise error(f"{type_.name} from the {sender.value} is not legal for relay {self.request_id} "
                        f"in state {self.state.value}" + (" after its RELAY_EOF" if after else ""),
                        ErrorCode.OUT_OF_ORDER)
        self._account(sender, type_, amount, error)
        self.state = after

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


def _amount(msg: Message) -> int:
    """The one number a message moves a window by."""
    if msg.RAW:
        return len(msg.data)  # type: ignore[attr-defined]
    if isinstance(msg, Window):
        return msg.bytes
    if isinstance(msg, (RelayOpen, RelayOpened)):
        return msg.window
    return 0

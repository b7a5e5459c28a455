"""What a command request and a relayed stream share: one table of legal messages per
(state, sending role), stepped by both ends for every message under the stream's id.

`Channel` does the stepping; a subclass names its table, its end state and what
each message does to its windows (`_account`), and may forbid a message the table
allows for a reason the table cannot hold (`_refused`: a relay's half close).
A message the peer sent that the table does not list is `out_of_order`
(RemoteProtocolError); one we are about to send is our own bug (LocalProtocolError).
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

from shoal.protocol.connection import Role
from shoal.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from shoal.protocol.messages import Message, MessageType, Window

__all__ = ["Channel"]


class Channel:
    """The sans-I/O state of one stream (a command request, a relay) at one end.

    Call `send` before a message of ours goes out and `receive` for each message the
    peer sent under the stream's id; `*_data` do the same with a type and the one
    number it moves a window by, without a message object (the hot path).

    Args:
        our_role: which end keeps this channel.
        request_id: the stream's id, for error messages.
    """

    __slots__ = ("our_role", "their_role", "request_id", "state")

    TABLE: ClassVar[dict[tuple[Enum, Role], dict[MessageType, Enum]]]
    START: ClassVar[Enum]
    END: ClassVar[Enum]
    NOUN: ClassVar[str]  # "request", "relay": what error messages call the stream

    def __init__(self, our_role: Role, request_id: int) -> None:
        self.our_role = our_role
        self.their_role = Role.AGENT if our_role is Role.CONTROLLER else Role.CONTROLLER
        self.request_id = request_id
        self.state: Enum = self.START

    @property
    def done(self) -> bool:
        return self.state is self.END

    def can_send(self, type_: MessageType) -> bool:
        """Whether the table lets us send `type_` now."""
        return type_ in self.TABLE[(self.state, self.our_role)] and not self._refused(self.our_role, type_)

    def send(self, msg: Message) -> None:
        """Step for a message of ours. Raises LocalProtocolError if we may not send it."""
        self._step(self.our_role, msg.TYPE, self._amount(msg), LocalProtocolError)

    def receive(self, msg: Message) -> None:
        """Step for a message of the peer's. Raises RemoteProtocolError (`out_of_order`,
        `window_exceeded`): the connection must fail with that code."""
        self._step(self.their_role, msg.TYPE, self._amount(msg), RemoteProtocolError)

    def send_data(self, type_: MessageType, amount: int) -> None:
        """`send` without a message object: its type and the one number it moves a
        window by (a data message's payload size, WINDOW's grant, an opening message's
        window; 0 for the others)."""
        self._step(self.our_role, type_, amount, LocalProtocolError)

    def receive_data(self, type_: MessageType, amount: int) -> None:
        """`receive` without a message object, as `send_data`."""
        self._step(self.their_role, type_, amount, RemoteProtocolError)

    def connection_lost(self) -> None:
        """The connection is gone: nothing more is sent or received on this stream."""
        self.state = self.END

    def _step(self, sender: Role, type_: MessageType, amount: int, error: type[ProtocolError]) -> None:
        after = self.TABLE[(self.state, sender)].get(type_)
        refused = after is not None and self._refused(sender, type_)
        if after is None or refused:
            raise error(f"{type_.name} from the {sender.value} is not legal for {self.NOUN} {self.request_id} "
                        f"in state {self.state.value}" + (f" ({refused})" if refused else ""),
                        ErrorCode.OUT_OF_ORDER)
        self._account(sender, type_, amount, error)
        self.state = after

    def _refused(self, sender: Role, type_: MessageType) -> str:
        """Why `type_` from `sender` is illegal although the table lists it ("" when it is not)."""
        return ""

    def _account(self, sender: Role, type_: MessageType, amount: int, error: type[ProtocolError]) -> None:
        """Move the windows for one legal message; raise `error` (`window_exceeded`) for an overrun."""
        raise NotImplementedError

    @staticmethod
    def _amount(msg: Message) -> int:
        """The one number a message moves a window by: a payload's size or a grant."""
        if msg.RAW:
            return len(msg.data)  # type: ignore[attr-defined]
        if isinstance(msg, Window):
            return msg.bytes
        return 0

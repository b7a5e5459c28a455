"""One command request's life, as both ends see it: its states, one table, its windows.

Both ends keep a `RequestChannel` per EXEC and step it with every message they send
or receive under its request id (PROTOCOL.md §3 Requests), as h11 keeps its
request/response cycle: neither end re-judges the peer's frames by itself.

    IDLE ──EXEC──▶ STARTING ──STARTED──▶ RUNNING ──EXIT──▶ DONE
        JOB_ATTACH ──┘   └──JOB_STARTED, ERROR──┴──ERROR (agent)──▶ DONE

A JOB_ATTACH is the same stream as an EXEC (its `window` is the output window); a
detached EXEC ends at JOB_STARTED.

`TRANSITIONS` is the one table: for each state and each sending role, the message
types that role may send and the state that follows; `shoal.protocol.channel.Channel`
steps it. A message the peer sent that the table does not list is `out_of_order`
(RemoteProtocolError); one we are about to send is our own bug (LocalProtocolError).

Flow control (§3 Flow control) is kept here too, the same numbers on both ends:

- output: EXEC grants `window` bytes of STDOUT+STDERR (0 means OUTPUT_WINDOW); the
  controller's WINDOW grants more. `output_credit` is what the agent may still send.
- stdin: STARTED grants `stdin_window` bytes of STDIN; the agent's WINDOW grants
  more. `stdin_credit` is what the controller may still send.

Data past a window is `window_exceeded`. Once DONE a request takes nothing more;
an end forgets it then, so a late frame under its id is an unknown request.
"""

from __future__ import annotations

from enum import Enum

from shoal.protocol.channel import Channel
from shoal.protocol.connection import Role
from shoal.protocol.defaults import OUTPUT_WINDOW
from shoal.protocol.errors import ErrorCode, ProtocolError
from shoal.protocol.messages import Exec, JobAttach, Message, MessageType, Started

__all__ = ["RequestState", "RequestChannel", "TRANSITIONS"]


class RequestState(Enum):
    IDLE = "idle"  # nothing sent yet
    STARTING = "starting"  # EXEC sent; STARTED (or an ERROR) not yet
    RUNNING = "running"  # STARTED: output, stdin and control flow
    DONE = "done"  # EXIT or the agent's ERROR: nothing more under this id


_S = RequestState
_T = MessageType
# What the controller may send while the command runs (or is starting: it may
# signal, cancel or grant before STARTED arrives, but not send stdin, whose window
# STARTED opens). An ERROR from the controller about a request is only reported.
_CONTROL = (_T.STDIN_EOF, _T.SIGNAL, _T.CANCEL, _T.WINDOW, _T.ERROR)

TRANSITIONS: dict[tuple[RequestState, Role], dict[MessageType, RequestState]] = {
    (_S.IDLE, Role.CONTROLLER): {_T.EXEC: _S.STARTING, _T.JOB_ATTACH: _S.STARTING},
    (_S.IDLE, Role.AGENT): {},
    (_S.STARTING, Role.CONTROLLER): dict.fromkeys(_CONTROL, _S.STARTING),
    (_S.STARTING, Role.AGENT): {_T.STARTED: _S.RUNNING, _T.JOB_STARTED: _S.DONE, _T.ERROR: _S.DONE},
    # RESIZE (a pty's window size, issue 17) only once the command runs: before
    # STARTED there is no terminal to size, and the controller keeps the size for later.
    (_S.RUNNING, Role.CONTROLLER): {_T.STDIN: _S.RUNNING, _T.RESIZE: _S.RUNNING,
                                    **dict.fromkeys(_CONTROL, _S.RUNNING)},
    (_S.RUNNING, Role.AGENT): {_T.STDOUT: _S.RUNNING, _T.STDERR: _S.RUNNING, _T.WINDOW: _S.RUNNING,
                               _T.EXIT: _S.DONE, _T.ERROR: _S.DONE},
    (_S.DONE, Role.CONTROLLER): {},
    (_S.DONE, Role.AGENT): {},
}

_OUTPUT = frozenset({_T.STDOUT, _T.STDERR})


class RequestChannel(Channel):
    """The sans-I/O state of one command request at one end (`Channel`'s stepping).

    Windows are in `output_credit` and `stdin_credit`; the controller asks
    `output_consumed` what to grant back.
    """

    __slots__ = ("output_window", "output_credit", "stdin_credit", "_consumed")

    TABLE = TRANSITIONS  # type: ignore[assignment]
    START, END, NOUN = RequestState.IDLE, RequestState.DONE, "request"

    def __init__(self, our_role: Role, request_id: int) -> None:
        super().__init__(our_role, request_id)
        self.output_window = 0  # the EXEC's grant: half of it is when output is granted back
        self.output_credit = 0  # STDOUT+STDERR bytes the agent may still send
        self.stdin_credit = 0  # STDIN bytes the controller may still send
        self._consumed = 0  # controller: output its consumer took, not yet granted back

    def output_consumed(self, nbytes: int) -> int:
        """Controller: its consumer took `nbytes` of output. Returns what to grant back
        in a WINDOW now (0: nothing yet), once half the window is consumed."""
        if self.state is RequestState.DONE:
            return 0
        self._consumed += nbytes
        if self._consumed < self.output_window // 2:
            return 0
        grant, self._consumed = self._consumed, 0
        return grant

    def _account(self, sender: Role, type_: MessageType, amount: int, error: type[ProtocolError]) -> None:
        """Move the windows for one legal message (§3 Flow control)."""
        if type_ in _OUTPUT:
            if amount > self.output_credit:
                raise error(f"output of request {self.request_id} overran its window", ErrorCode.WINDOW_EXCEEDED)
            self.output_credit -= amount
        elif type_ is MessageType.STDIN:
            if amount > self.stdin_credit:
                raise error(f"stdin for request {self.request_id} overran its window", ErrorCode.WINDOW_EXCEEDED)
            self.stdin_credit -= amount
        elif type_ is MessageType.WINDOW:
            if sender is Role.CONTROLLER:
                self.output_credit += amount
            else:
                self.stdin_credit += amount
        elif type_ is MessageType.EXEC or type_ is MessageType.JOB_ATTACH:
            self.output_window = self.output_credit = amount or OUTPUT_WINDOW
        elif type_ is MessageType.STARTED:
            self.stdin_credit = amount

    @staticmethod
    def _amount(msg: Message) -> int:
        """The one number a message moves a window by: payload, grant or window."""
        if isinstance(msg, (Exec, JobAttach)):
            return msg.window
        if isinstance(msg, Started):
            return msg.stdin_window
        return Channel._amount(msg)

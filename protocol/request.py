"""A request's life, as both ends see it: its states, one table per kind, its windows.

Both ends keep a `RequestChannel` per request and step it with every message they
send or receive under its request id (PROTOCOL.md §3 Requests), as h11 keeps its
request/response cycle: neither end re-judges the peer's frames by itself. Every
request a controller opens has a table.

A command (EXEC, or JOB_ATTACH, the same stream):

    IDLE ──EXEC──▶ STARTING ──STARTED──▶ RUNNING ──EXIT──▶ DONE
        JOB_ATTACH ──┘   └──JOB_STARTED, ERROR──┴──ERROR (agent)──▶ DONE

A detached EXEC ends at JOB_STARTED. The other kinds: METRICS_REQUEST, JOBS_LIST,
JOB_KILL and REMOVE_PATHS are each answered by one message (METRICS_REPLY,
JOBS_REPLY, JOB_KILLED, REMOVED) or an ERROR; a LIST_TREE by TREE_ENTRIES until
the one whose `done` is true; a put goes PUT_FILE, FILE_INFO (RUNNING: data),
FILE_END (FINISHING), FILE_DONE, and a `mkdir` put (its own kind, so that a file
put answered FILE_DONE without its data is refused) goes straight from PUT_FILE to
FILE_DONE; a get goes GET_FILE, FILE_INFO (RUNNING: data), FILE_END; a batch goes
PUT_BATCH (RUNNING at once: its data follows), BATCH_DONE; a relayed
stream (issue 19) goes RELAY_OPEN, RELAY_OPENED (RUNNING: RELAY_DATA both ways),
RELAY_CLOSE from either end.

`TRANSITIONS` holds one table per `RequestKind`: for each state and each sending
role, the message types that role may send and the state that follows. Where the
next state depends on what a message says rather than its type alone (the last
TREE_ENTRIES says `done`), the table's key is a `When`: the type with one field's
value, and a message of that type is looked up by that field's value, so no caller
special-cases it. A message the peer sent that the table does not list is
`out_of_order` (RemoteProtocolError); one we are about to send is our own bug
(LocalProtocolError).

Flow control (§3 Flow control, File transfer) is kept here too, the same numbers
on both ends:

- output: EXEC grants `window` bytes of STDOUT+STDERR (0 means OUTPUT_WINDOW); the
  controller's WINDOW grants more. `output_credit` is what the agent may still send.
  A get's FILE_DATA is output too: GET_FILE's `window` (0 means TRANSFER_WINDOW,
  at most MAX_GET_WINDOW).
- stdin: STARTED grants `stdin_window` bytes of STDIN; the agent's WINDOW grants
  more. `stdin_credit` is what the controller may still send. A put's FILE_DATA is
  input too: FILE_INFO's `window` (0 until FILE_INFO: data before it is past the
  window). A batch's FILE_DATA is input whose window is the sum of its entries'
  sizes, never topped up.
- a relay's RELAY_DATA is output from the agent (RELAY_OPEN's `window`) and input
  from the controller (RELAY_OPENED's `window`), each 0 meaning RELAY_WINDOW.

Data past a window is `window_exceeded`. Once DONE a request takes nothing more;
an end forgets it then, so a late frame under its id is an unknown request.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shoal.protocol.connection import Role
from shoal.protocol.defaults import MAX_GET_WINDOW, OUTPUT_WINDOW, RELAY_WINDOW, TRANSFER_WINDOW
from shoal.protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from shoal.protocol.messages import (Exec, FileInfo, GetFile, JobAttach, Message, MessageType, PutBatch, PutFile,
                                     RelayOpen, RelayOpened, Started, Window)

__all__ = ["RequestKind", "RequestState", "RequestChannel", "TRANSITIONS", "OPENERS", "request_kind", "When", "Key"]


class RequestKind(Enum):
    COMMAND = "command"  # EXEC or JOB_ATTACH: a command's streams
    METRICS = "metrics"  # METRICS_REQUEST: one reply
    PUT = "put"  # PUT_FILE: a file to the agent
    MKDIR = "mkdir"  # PUT_FILE with `mkdir`: a directory, answered at once
    GET = "get"  # GET_FILE: a file from the agent
    BATCH = "batch"  # PUT_BATCH: many small files to the agent, their data at once
    RELAY = "relay"  # RELAY_OPEN: a byte stream to another agent through this one (issue 19)
    LIST = "list"  # LIST_TREE: a directory's listing, in parts
    REMOVE = "remove"  # REMOVE_PATHS: one reply, the count removed
    JOBS = "jobs"  # JOBS_LIST: one reply, the jobs the key may see
    KILL = "kill"  # JOB_KILL: one reply, the processes signalled


class RequestState(Enum):
    IDLE = "idle"  # nothing sent yet
    STARTING = "starting"  # the request sent; its first answer (or an ERROR) not yet
    RUNNING = "running"  # STARTED or FILE_INFO: data and control flow
    FINISHING = "finishing"  # a put's FILE_END sent; FILE_DONE (or an ERROR) not yet
    DONE = "done"  # the last answer or the agent's ERROR: nothing more under this id


@dataclass(frozen=True, slots=True)
class When:
    """A table key for a message of `type` whose `field` says `value` (TREE_ENTRIES with
    `done` true): the state that follows depends on what the message says."""

    type: MessageType
    field: str
    value: bool

    @property
    def name(self) -> str:
        return f"{self.type.name} with {self.field} {str(self.value).lower()}"


Key = MessageType | When  # what a table row is keyed on

_S = RequestState
_T = MessageType
_C, _A = Role.CONTROLLER, Role.AGENT
Row = dict[Key, RequestState]
Table = dict[tuple[RequestState, Role], Row]

# What the controller may send while the command runs (or is starting: it may
# signal, cancel or grant before STARTED arrives, but not send stdin, whose window
# STARTED opens). An ERROR from the controller about a request is only reported,
# under every kind.
_CONTROL: tuple[Key, ...] = (_T.STDIN_EOF, _T.SIGNAL, _T.CANCEL, _T.WINDOW, _T.ERROR)
_END: Row = {_T.ERROR: _S.DONE}  # the agent's ERROR ends a request of any kind


def _ended(table: Table) -> Table:
    """`table` with its DONE rows, where nothing is legal, and the agent's nothing while IDLE."""
    return {**table, (_S.IDLE, _A): {}, (_S.DONE, _C): {}, (_S.DONE, _A): {}}


def _one_reply(request: MessageType, reply: MessageType) -> Table:
    """The table of a request answered by one message (or the agent's ERROR), nothing between."""
    return _ended({
        (_S.IDLE, _C): {request: _S.STARTING},
        (_S.STARTING, _C): {_T.ERROR: _S.STARTING},
        (_S.STARTING, _A): {reply: _S.DONE, **_END},
    })


# A listing comes in parts: TREE_ENTRIES until the one that says it is the last.
_PART, _LAST = When(_T.TREE_ENTRIES, "done", False), When(_T.TREE_ENTRIES, "done", True)


TRANSITIONS: dict[RequestKind, Table] = {
    RequestKind.COMMAND: _ended({
        (_S.IDLE, _C): {_T.EXEC: _S.STARTING, _T.JOB_ATTACH: _S.STARTING},
        (_S.STARTING, _C): dict.fromkeys(_CONTROL, _S.STARTING),
        (_S.STARTING, _A): {_T.STARTED: _S.RUNNING, _T.JOB_STARTED: _S.DONE, **_END},
        # RESIZE (a pty's window size, issue 17) only once the command runs: before
        # STARTED there is no terminal to size, and the controller keeps the size for later.
        (_S.RUNNING, _C): {_T.STDIN: _S.RUNNING, _T.RESIZE: _S.RUNNING, **dict.fromkeys(_CONTROL, _S.RUNNING)},
        (_S.RUNNING, _A): {_T.STDOUT: _S.RUNNING, _T.STDERR: _S.RUNNING, _T.WINDOW: _S.RUNNING,
                           _T.EXIT: _S.DONE, **_END},
    }),
    RequestKind.METRICS: _one_reply(_T.METRICS_REQUEST, _T.METRICS_REPLY),
    # A file put is opened by FILE_INFO, whose window the agent's WINDOW tops up
    # until it reads FILE_END. FILE_DATA before FILE_INFO is judged by the window, which is
    # 0 then (window_exceeded).
    RequestKind.PUT: _ended({
        (_S.IDLE, _C): {_T.PUT_FILE: _S.STARTING},
        (_S.STARTING, _C): {_T.FILE_DATA: _S.STARTING, _T.ERROR: _S.STARTING},
        (_S.STARTING, _A): {_T.FILE_INFO: _S.RUNNING, **_END},
        (_S.RUNNING, _C): {_T.FILE_DATA: _S.RUNNING, _T.FILE_END: _S.FINISHING, _T.ERROR: _S.RUNNING},
        (_S.RUNNING, _A): {_T.WINDOW: _S.RUNNING, **_END},
        (_S.FINISHING, _C): {_T.ERROR: _S.FINISHING},
        # A WINDOW the agent sent before it read FILE_END may cross it.
        (_S.FINISHING, _A): {_T.WINDOW: _S.FINISHING, _T.FILE_DONE: _S.DONE, **_END},
    }),
    # A `mkdir` put is answered FILE_DONE at once, with no data either way; FILE_DATA
    # is judged by the window, 0 here, as before a file put's FILE_INFO.
    RequestKind.MKDIR: _ended({
        (_S.IDLE, _C): {_T.PUT_FILE: _S.STARTING},
        (_S.STARTING, _C): {_T.FILE_DATA: _S.STARTING, _T.ERROR: _S.STARTING},
        (_S.STARTING, _A): {_T.FILE_DONE: _S.DONE, **_END},
    }),
    RequestKind.GET: _ended({
        (_S.IDLE, _C): {_T.GET_FILE: _S.STARTING},
        (_S.STARTING, _C): {_T.ERROR: _S.STARTING},
        (_S.STARTING, _A): {_T.FILE_INFO: _S.RUNNING, **_END},
        (_S.RUNNING, _C): {_T.WINDOW: _S.RUNNING, _T.ERROR: _S.RUNNING},
        (_S.RUNNING, _A): {_T.FILE_DATA: _S.RUNNING, _T.FILE_END: _S.DONE, **_END},
    }),
    # A batch's data follows its PUT_BATCH at once, within the batch's total size:
    # no FILE_INFO, WINDOW or FILE_END.
    RequestKind.BATCH: _ended({
        (_S.IDLE, _C): {_T.PUT_BATCH: _S.RUNNING},
        (_S.RUNNING, _C): {_T.FILE_DATA: _S.RUNNING, _T.ERROR: _S.RUNNING},
        (_S.RUNNING, _A): {_T.BATCH_DONE: _S.DONE, **_END},
    }),
    # Either end may close a relay; the controller may give up on one still opening.
    RequestKind.RELAY: _ended({
        (_S.IDLE, _C): {_T.RELAY_OPEN: _S.STARTING},
        (_S.STARTING, _C): {_T.RELAY_CLOSE: _S.DONE},
        (_S.STARTING, _A): {_T.RELAY_OPENED: _S.RUNNING, **_END},
        (_S.RUNNING, _C): {_T.RELAY_DATA: _S.RUNNING, _T.WINDOW: _S.RUNNING, _T.RELAY_CLOSE: _S.DONE},
        (_S.RUNNING, _A): {_T.RELAY_DATA: _S.RUNNING, _T.WINDOW: _S.RUNNING, _T.RELAY_CLOSE: _S.DONE},
    }),
    # The controller sends nothing after LIST_TREE but an ERROR report: no window, no cancel.
    RequestKind.LIST: _ended({
        (_S.IDLE, _C): {_T.LIST_TREE: _S.STARTING},
        (_S.STARTING, _C): {_T.ERROR: _S.STARTING},
        (_S.STARTING, _A): {_PART: _S.RUNNING, _LAST: _S.DONE, **_END},
        (_S.RUNNING, _C): {_T.ERROR: _S.RUNNING},
        (_S.RUNNING, _A): {_PART: _S.RUNNING, _LAST: _S.DONE, **_END},
    }),
    RequestKind.REMOVE: _one_reply(_T.REMOVE_PATHS, _T.REMOVED),
    RequestKind.JOBS: _one_reply(_T.JOBS_LIST, _T.JOBS_REPLY),
    RequestKind.KILL: _one_reply(_T.JOB_KILL, _T.JOB_KILLED),
}

# The field each type keyed by `When` is looked up by (TREE_ENTRIES: `done`), from the tables.
_SAID: dict[MessageType, str] = {key.type: key.field for table in TRANSITIONS.values() for row in table.values()
                                 for key in row if isinstance(key, When)}

# The kind of request each opening message starts, from the tables' first rows
# (a PUT_FILE with `mkdir` opens a MKDIR request instead: `request_kind`).
OPENERS: dict[MessageType, RequestKind] = {
    type_: kind for kind, table in TRANSITIONS.items() if kind is not RequestKind.MKDIR
    for type_ in table[(_S.IDLE, Role.CONTROLLER)] if isinstance(type_, MessageType)}


def request_kind(start: Message) -> RequestKind | None:
    """The table the request `start` opens follows; None when it opens none."""
    if isinstance(start, PutFile) and start.mkdir:
        return RequestKind.MKDIR
    return OPENERS.get(start.TYPE)


_OUTPUT = frozenset({_T.STDOUT, _T.STDERR})
_DATA = frozenset({_T.FILE_DATA, _T.RELAY_DATA})  # output from the agent, input from the controller

class RequestChannel:
    """The sans-I/O state of one request at one end.

    Call `send` before a message of ours goes out and `receive` for each message
    the peer sent under this request id; `*_data` do the same for raw data without
    a message object (the hot path). Windows are in `output_credit` and
    `stdin_credit`; the controller asks `output_consumed` what to grant back.

    Args:
        our_role: which end keeps this channel.
        request_id: the request's id, for error messages.
        kind: which table the request follows.
    """

    __slots__ = ("our_role", "their_role", "request_id", "kind", "state", "output_window", "output_credit",
                 "stdin_credit", "_consumed", "_table")

    def __init__(self, our_role: Role, request_id: int, kind: RequestKind = RequestKind.COMMAND) -> None:
        self.our_role = our_role
        self.kind = kind
        self._table = TRANSITIONS[kind]
        self.their_role = Role.AGENT if our_role is Role.CONTROLLER else Role.CONTROLLER
        self.request_id = request_id
        self.state = RequestState.IDLE
        self.output_window = 0  # the EXEC's grant: half of it is when output is granted back
        self.output_credit = 0  # STDOUT+STDERR (a get's FILE_DATA) bytes the agent may still send
        self.stdin_credit = 0  # STDIN (a put's FILE_DATA) bytes the controller may still send
        self._consumed = 0  # controller: output its consumer took, not yet granted back

    @property
    def done(self) -> bool:
        return self.state is RequestState.DONE

    @property
    def send_credit(self) -> int:
        """Data bytes we may send now: the agent's output window, the controller's input one."""
        return self.output_credit if self.our_role is Role.AGENT else self.stdin_credit

    def can_send(self, type_: Key) -> bool:
        """Whether the table lets us send `type_` now."""
        return type_ in self._table[(self.state, self.our_role)]

    def send(self, msg: Message) -> None:
        """Step for a message of ours. Raises LocalProtocolError if we may not send it."""
        self._step(self.our_role, _key(msg), _amount(msg), LocalProtocolError)

    def receive(self, msg: Message) -> None:
        """Step for a message of the peer's. Raises RemoteProtocolError (`out_of_order`,
        `window_exceeded`): the connection must fail with that code."""
        self._step(self.their_role, _key(msg), _amount(msg), RemoteProtocolError)

    def send_data(self, type_: Key, amount: int) -> None:
        """`send` without a message object: its key (a type, or a `When` for a type the
        tables key on what it says) and the one number it moves a window by (payload
        bytes of STDOUT/STDERR/STDIN/FILE_DATA, WINDOW's grant, the `window` of EXEC,
        JOB_ATTACH, GET_FILE and FILE_INFO, STARTED's `stdin_window`, PUT_BATCH's total
        size; 0 for the others)."""
        self._step(self.our_role, type_, amount, LocalProtocolError)

    def receive_data(self, type_: Key, amount: int) -> None:
        """`receive` without a message object, as `send_data`."""
        self._step(self.their_role, type_, amount, RemoteProtocolError)

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

    def connection_lost(self) -> None:
        """The connection is gone: nothing more is sent or received for this request."""
        self.state = RequestState.DONE

    def _step(self, sender: Role, type_: Key, amount: int, error: type[ProtocolError]) -> None:
        after = self._table[(self.state, sender)].get(type_)
        if after is None:
            raise error(f"{type_.name} from the {sender.value} is not legal for request {self.request_id} "
                        f"in state {self.state.value}", ErrorCode.OUT_OF_ORDER)
        self._account(sender, type_, amount, error)
        self.state = after

    def _account(self, sender: Role, type_: Key, amount: int, error: type[ProtocolError]) -> None:
        """Move the windows for one legal message (§3 Flow control)."""
        if type_ in _OUTPUT or type_ in _DATA and sender is Role.AGENT:
            if amount > self.output_credit:
                raise error(f"output of request {self.request_id} overran its window", ErrorCode.WINDOW_EXCEEDED)
            self.output_credit -= amount
        elif type_ is MessageType.STDIN or type_ in _DATA:
            if amount > self.stdin_credit:
                what = {MessageType.STDIN: "stdin", MessageType.FILE_DATA: "file data"}.get(type_, "relay data")
                raise error(f"{what} for request {self.request_id} overran its window", ErrorCode.WINDOW_EXCEEDED)
            self.stdin_credit -= amount
        elif type_ is MessageType.WINDOW:
            if sender is Role.CONTROLLER:
                self.output_credit += amount
            else:
                self.stdin_credit += amount
        elif type_ is MessageType.EXEC or type_ is MessageType.JOB_ATTACH:
            self.output_window = self.output_credit = amount or OUTPUT_WINDOW
        elif type_ is MessageType.GET_FILE:
            self.output_window = self.output_credit = min(amount or TRANSFER_WINDOW, MAX_GET_WINDOW)
        elif (type_ is MessageType.STARTED or type_ is MessageType.PUT_BATCH
              or type_ is MessageType.FILE_INFO and self.kind is RequestKind.PUT):
            self.stdin_credit = amount
        elif type_ is MessageType.RELAY_OPEN:
            self.output_window = self.output_credit = amount or RELAY_WINDOW
        elif type_ is MessageType.RELAY_OPENED:
            self.stdin_credit = amount or RELAY_WINDOW


def _key(msg: Message) -> Key:
    """What the tables know `msg` by: its type, or for a type keyed on a field, a `When`."""
    field = _SAID.get(msg.TYPE)
    return msg.TYPE if field is None else When(msg.TYPE, field, getattr(msg, field))


def _amount(msg: Message) -> int:
    """The one number a message moves a window by: payload, grant or window."""
    if msg.RAW:
        return len(msg.data)  # type: ignore[attr-defined]
    if isinstance(msg, Window):
        return msg.bytes
    if isinstance(msg, (Exec, JobAttach, GetFile, FileInfo, RelayOpen, RelayOpened)):
        return msg.window
    if isinstance(msg, Started):
        return msg.stdin_window
    if isinstance(msg, PutBatch):
        return _batch_size(msg)
    return 0


def _batch_size(msg: PutBatch) -> int:
    """The content bytes a PUT_BATCH announces: its window. A size that is no
    integer counts 0 here; the request's validation refuses it."""
    sizes = (entry.get("size", 0) for entry in msg.files)
    return sum(size for size in sizes if isinstance(size, int) and not isinstance(size, bool) and size > 0)

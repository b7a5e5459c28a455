"""The request state machine (shoal.protocol.request), checked against its tables.

Every kind x state x message type x sending role x keeping end: legal messages move
to the table's next state, everything else is `out_of_order`, ours as
LocalProtocolError and the peer's as RemoteProtocolError. Then the windows, both
directions, for commands and transfers.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from pathlib import Path

import pytest

from shoal.protocol.connection import Role
from shoal.protocol.defaults import OUTPUT_WINDOW
from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.defaults import MAX_GET_WINDOW, TRANSFER_WINDOW
from shoal.protocol.messages import (Error, Exec, Exit, FileData, FileDone, FileEnd, FileInfo, GetFile, JobAttach,
                                     JobKill, JobKilled, JobsList, JobsReply, JobStarted, ListTree, MessageType,
                                     MetricsReply, MetricsRequest, PutBatch, BatchDone, PutFile, Removed, RemovePaths,
                                     Signal, Started, Stderr, Stdin, StdinEof, Stdout, TreeEntries, Window)
from shoal.protocol.request import TRANSITIONS, Key, RequestChannel, RequestKind, RequestState, When

RID = 7
BIG = 1 << 30
_C, _A = Role.CONTROLLER, Role.AGENT

_COMMAND = RequestKind.COMMAND
# Every key a table may hold: each type, and each `When` the tables key a type's contents on.
_KEYS: list[Key] = [*MessageType, *sorted({key for table in TRANSITIONS.values() for row in table.values()
                                           for key in row if isinstance(key, When)}, key=lambda k: k.name)]


def _paths(kind: RequestKind) -> dict[RequestState, list[tuple[Role, Key]]]:
    """The shortest legal way into each state of `kind`'s table: (sender, type) steps from IDLE."""
    table, paths = TRANSITIONS[kind], {RequestState.IDLE: []}
    queue = deque([RequestState.IDLE])
    while queue:
        state = queue.popleft()
        for role in Role:
            for type_, after in table[(state, role)].items():
                if after not in paths:
                    paths[after] = [*paths[state], (role, type_)]
                    queue.append(after)
    return paths


_STATES = [(kind, state) for kind in RequestKind for state in _paths(kind)]


def _step(ch: RequestChannel, sender: Role, type_: Key, amount: int = 0) -> None:
    if sender is ch.our_role:
        ch.send_data(type_, amount)
    else:
        ch.receive_data(type_, amount)


def channel_in(state: RequestState, our_role: Role, kind: RequestKind = _COMMAND) -> RequestChannel:
    ch = RequestChannel(our_role, RID, kind)
    for sender, type_ in _paths(kind)[state]:
        _step(ch, sender, type_, BIG)
    assert ch.state is state
    return ch


@pytest.mark.parametrize("kind", list(RequestKind))
def test_each_table_names_its_states_for_both_roles_and_every_state_is_reached(kind: RequestKind) -> None:
    states = set(_paths(kind))
    assert {RequestState.IDLE, RequestState.DONE} <= states
    assert set(TRANSITIONS[kind]) == set(itertools.product(states, Role))
    assert TRANSITIONS[kind][(RequestState.DONE, _C)] == TRANSITIONS[kind][(RequestState.DONE, _A)] == {}


@pytest.mark.parametrize("our_role", list(Role))
@pytest.mark.parametrize(("kind", "state"), _STATES, ids=[f"{k.value}-{s.value}" for k, s in _STATES])
def test_every_message_in_every_state_follows_the_table(kind: RequestKind, state: RequestState,
                                                         our_role: Role) -> None:
    for type_, sender in itertools.product(_KEYS, Role):
        ch = channel_in(state, our_role, kind)
        after = TRANSITIONS[kind][(state, sender)].get(type_)
        if sender is our_role:
            assert ch.can_send(type_) is (after is not None)
        if after is not None:
            _step(ch, sender, type_)
            assert ch.state is after
            continue
        error = LocalProtocolError if sender is our_role else RemoteProtocolError
        with pytest.raises(error) as info:
            _step(ch, sender, type_)
        assert info.value.code == ErrorCode.OUT_OF_ORDER
        assert type(info.value) is error
        assert ch.state is state, (type_, sender)  # an illegal message changes nothing


def test_a_lifecycle_in_messages_on_both_ends() -> None:
    ends = [RequestChannel(_C, RID), RequestChannel(_A, RID)]
    script = [Exec(RID, argv=["cat"], stdin=True, window=10), Started(RID, pid=1, stdin_window=4),
              Stdin(RID, b"abcd"), Window(RID, bytes=4), Stdout(RID, b"abcd"), Stderr(RID, b"!"),
              Window(RID, bytes=5), StdinEof(RID), Signal(RID, signal=15), Exit(RID, status=0)]
    for msg in script:
        sender = _A if msg.TYPE in (MessageType.STARTED, MessageType.STDOUT, MessageType.STDERR, MessageType.EXIT) \
            or isinstance(msg, Window) and msg.bytes == 4 else _C
        for ch in ends:
            (ch.send if ch.our_role is sender else ch.receive)(msg)
        assert ends[0].state is ends[1].state
        assert (ends[0].output_credit, ends[0].stdin_credit) == (ends[1].output_credit, ends[1].stdin_credit)
    assert ends[0].done and ends[1].done
    assert ends[0].output_credit == 10 and ends[0].stdin_credit == 4


def test_an_attach_is_the_same_stream_as_an_exec_and_a_detached_exec_ends_at_job_started() -> None:
    ends = [RequestChannel(_C, RID), RequestChannel(_A, RID)]
    script = [JobAttach(RID, job="j", window=6), Started(RID, pid=1), Stdout(RID, b"abcd"), Stderr(RID, b"ef"),
              Window(RID, bytes=6), Exit(RID, status=3)]
    for msg in script:
        sender = _C if isinstance(msg, (JobAttach, Window)) else _A
        for ch in ends:
            (ch.send if ch.our_role is sender else ch.receive)(msg)
    assert ends[0].done and ends[1].done and ends[1].output_credit == 6
    overrun = RequestChannel(_C, RID)
    overrun.send(JobAttach(RID, job="j", window=2))
    overrun.receive(Started(RID, pid=1))
    with pytest.raises(RemoteProtocolError) as info:
        overrun.receive(Stdout(RID, b"abc"))
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED
    detached = RequestChannel(_A, RID)
    detached.receive(Exec(RID, shell="sleep 9", detach=True))
    detached.send(JobStarted(RID, job="j", pid=1))
    assert detached.done


def test_an_agent_error_ends_a_request_starting_or_running() -> None:
    for state in (RequestState.STARTING, RequestState.RUNNING):
        ch = channel_in(state, _C)
        ch.receive(Error(RID, code=ErrorCode.NOT_FOUND, message="nope", status=127))
        assert ch.done


def test_a_controller_error_is_only_a_report() -> None:
    ch = channel_in(RequestState.RUNNING, _A)
    ch.receive(Error(RID, code="x", message="y"))
    assert ch.state is RequestState.RUNNING


def test_exec_window_zero_means_the_default() -> None:
    ch = RequestChannel(_A, RID)
    ch.receive(Exec(RID, shell="true", window=0))
    assert ch.output_window == ch.output_credit == OUTPUT_WINDOW


@pytest.mark.parametrize("our_role, error", [(_C, RemoteProtocolError), (_A, LocalProtocolError)])
@pytest.mark.parametrize("kind", [MessageType.STDOUT, MessageType.STDERR])
def test_output_past_the_window_is_window_exceeded(our_role: Role, error: type[Exception],
                                                   kind: MessageType) -> None:
    ch = RequestChannel(our_role, RID)
    _step(ch, _C, MessageType.EXEC, 100)
    _step(ch, _A, MessageType.STARTED, 0)
    _step(ch, _A, kind, 60)
    _step(ch, _A, kind, 40)
    assert ch.output_credit == 0
    with pytest.raises(error) as info:
        _step(ch, _A, kind, 1)
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED  # type: ignore[attr-defined]
    _step(ch, _C, MessageType.WINDOW, 1)
    _step(ch, _A, kind, 1)
    assert ch.output_credit == 0


@pytest.mark.parametrize("our_role, error", [(_A, RemoteProtocolError), (_C, LocalProtocolError)])
def test_stdin_past_the_window_is_window_exceeded(our_role: Role, error: type[Exception]) -> None:
    ch = RequestChannel(our_role, RID)
    _step(ch, _C, MessageType.EXEC, 0)
    _step(ch, _A, MessageType.STARTED, 8)
    _step(ch, _C, MessageType.STDIN, 8)
    with pytest.raises(error) as info:
        _step(ch, _C, MessageType.STDIN, 1)
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED  # type: ignore[attr-defined]
    assert "stdin for request 7 overran its window" in str(info.value)
    _step(ch, _A, MessageType.WINDOW, 3)
    assert ch.stdin_credit == 3


def test_no_stdin_window_without_stdin() -> None:
    ch = channel_in(RequestState.STARTING, _A)
    ch.send(Started(RID, pid=1, stdin_window=0))
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(Stdin(RID, b"x"))
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED


def test_output_is_granted_back_at_half_the_window() -> None:
    ch = RequestChannel(_C, RID)
    ch.send(Exec(RID, shell="yes", window=100))
    ch.receive(Started(RID, pid=1, stdin_window=0))
    ch.receive(Stdout(RID, b"x" * 100))
    assert ch.output_consumed(30) == 0
    assert ch.output_consumed(19) == 0
    assert ch.output_consumed(1) == 50
    ch.send(Window(RID, bytes=50))
    assert ch.output_credit == 50
    ch.receive(Exit(RID, status=0))
    assert ch.output_consumed(100) == 0  # nothing is granted to a request that ended


def test_a_lost_connection_ends_the_request() -> None:
    ch = channel_in(RequestState.RUNNING, _C)
    ch.connection_lost()
    assert ch.done and not ch.can_send(MessageType.SIGNAL)


def _doc_key(name: str) -> Key:
    """`TYPE`, or `TYPE (`field` value)` for a type keyed on what it says."""
    said = re.fullmatch(r"(\w+) \(`(\w+)` (\w+)\)", name)
    if said is None:
        return MessageType[name]
    return When(MessageType[said.group(1)], said.group(2), json.loads(said.group(3)))


def _doc_cell(cell: str) -> dict[Key, RequestState]:
    """`A, B; C → state` as the table's row: types without an arrow keep the row's state."""
    out: dict[Key, RequestState] = {}
    if cell.strip() == "nothing":
        return out
    for part in re.split(r"[;,]", cell):
        name, _, after = part.strip().partition(" → ")
        out[_doc_key(name)] = RequestState(after.strip("` ")) if after else None  # type: ignore[assignment]
    return out


@pytest.mark.parametrize("kind", list(RequestKind))
def test_protocol_md_states_the_same_table(kind: RequestKind) -> None:
    doc = Path(__file__).resolve().parents[2].joinpath("protocol", "PROTOCOL.md").read_text()
    heading = f"| {kind.value} state | the controller may send | the agent may send |\n"
    assert doc.count(heading) == 1, f"PROTOCOL.md has no one table headed {heading!r}"
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", doc[doc.index(heading):].split("\n\n")[0], re.M)
    table = {}
    for state_name, controller, agent in rows:
        state = RequestState(state_name)
        for role, cell in ((_C, controller), (_A, agent)):
            table[(state, role)] = {t: (after or state) for t, after in _doc_cell(cell).items()}
    assert table == TRANSITIONS[kind]


def test_resize_is_legal_only_while_running() -> None:
    """RESIZE (a pty's size) needs the terminal STARTED announces; the controller holds it until then."""
    ch = RequestChannel(_C, RID)
    assert not ch.can_send(MessageType.RESIZE)
    _step(ch, _C, MessageType.EXEC, BIG)
    assert not ch.can_send(MessageType.RESIZE)
    _step(ch, _A, MessageType.STARTED, BIG)
    assert ch.can_send(MessageType.RESIZE)
    ch.send_data(MessageType.RESIZE, 0)
    assert ch.state is RequestState.RUNNING


# -- metrics and transfers -------------------------------------------------------


def _play(kind: RequestKind, script: list[tuple[Role, object]]) -> list[RequestChannel]:
    """Both ends step through `script` ((sender, message) pairs) and stay in step."""
    ends = [RequestChannel(_C, RID, kind), RequestChannel(_A, RID, kind)]
    for sender, msg in script:
        for ch in ends:
            (ch.send if ch.our_role is sender else ch.receive)(msg)  # type: ignore[arg-type]
        assert ends[0].state is ends[1].state
        assert (ends[0].output_credit, ends[0].stdin_credit) == (ends[1].output_credit, ends[1].stdin_credit)
    return ends


def test_metrics_is_one_reply() -> None:
    ends = _play(RequestKind.METRICS, [(_C, MetricsRequest(RID)), (_A, MetricsReply(RID, metrics={}))])
    assert ends[0].done and ends[1].done


def test_a_put_sends_data_within_file_infos_window_and_ends_with_file_done() -> None:
    ends = _play(RequestKind.PUT, [
        (_C, PutFile(RID, path="/f", size=6)), (_A, FileInfo(RID, size=6, window=4)),
        (_C, FileData(RID, b"abcd")), (_A, Window(RID, bytes=4)), (_C, FileData(RID, b"ef")),
        (_C, FileEnd(RID, sha256="0" * 64))])
    assert ends[0].state is RequestState.FINISHING and ends[0].stdin_credit == 2
    assert not ends[0].can_send(MessageType.FILE_DATA)  # FILE_END ends the data
    for ch in ends:
        (ch.receive if ch.our_role is _C else ch.send)(FileDone(RID, sha256="0" * 64, bytes=6, path="/f"))
    assert ends[0].done and ends[1].done


def test_put_data_past_file_infos_window_is_window_exceeded() -> None:
    ch = RequestChannel(_A, RID, RequestKind.PUT)
    ch.receive(PutFile(RID, path="/f", size=9))
    ch.send(FileInfo(RID, size=9, window=4))
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(FileData(RID, b"abcde"))
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED
    assert "file data for request 7 overran its window" in str(info.value)


def test_a_mkdir_put_is_answered_file_done_at_once() -> None:
    ends = _play(RequestKind.MKDIR, [(_C, PutFile(RID, path="/d", size=0, mkdir=True)),
                                     (_A, FileDone(RID, sha256="", bytes=0, path="/d"))])
    assert ends[0].done and ends[1].done


def test_a_file_put_answered_file_done_before_its_data_is_out_of_order() -> None:
    """Only a `mkdir` put may be done at once: a file put claimed done unsent is refused."""
    ch = RequestChannel(_C, RID, RequestKind.PUT)
    ch.send(PutFile(RID, path="/f", size=5))
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(FileDone(RID, sha256="0" * 64, bytes=5, path="/f"))
    assert info.value.code == ErrorCode.OUT_OF_ORDER


@pytest.mark.parametrize(("asked", "granted"), [(0, TRANSFER_WINDOW), (5, 5), (BIG, MAX_GET_WINDOW)])
def test_a_get_streams_within_get_files_window(asked: int, granted: int) -> None:
    ends = _play(RequestKind.GET, [(_C, GetFile(RID, path="/f", window=asked)),
                                   (_A, FileInfo(RID, size=7, window=0))])
    assert ends[0].output_credit == granted
    ch = RequestChannel(_C, RID, RequestKind.GET)
    ch.send(GetFile(RID, path="/f", window=5))
    ch.receive(FileInfo(RID, size=7))
    ch.receive(FileData(RID, b"abcde"))
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(FileData(RID, b"f"))
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED
    ch.send(Window(RID, bytes=2))
    ch.receive(FileData(RID, b"fg"))
    ch.receive(FileEnd(RID, sha256="0" * 64))
    assert ch.done


def test_put_data_before_file_info_is_past_a_window_of_zero() -> None:
    """PROTOCOL.md: no FILE_DATA before FILE_INFO, judged as the window (0 until FILE_INFO)."""
    ch = RequestChannel(_A, RID, RequestKind.PUT)
    ch.receive(PutFile(RID, path="/f", size=1))
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(FileData(RID, b"x"))
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(FileEnd(RID, sha256="0" * 64))
    assert info.value.code == ErrorCode.OUT_OF_ORDER


def _batch(*sizes: object) -> PutBatch:
    return PutBatch(RID, tree="/t", files=[{"path": f"/t/{i}", "size": size} for i, size in enumerate(sizes)])


def test_a_batch_sends_exactly_its_total_size_and_ends_with_batch_done() -> None:
    ends = _play(RequestKind.BATCH, [(_C, _batch(3, 4)), (_C, FileData(RID, b"abcde")), (_C, FileData(RID, b"fg"))])
    assert ends[0].state is RequestState.RUNNING and ends[0].stdin_credit == 0
    with pytest.raises(RemoteProtocolError) as info:
        ends[1].receive(FileData(RID, b"h"))
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED
    for ch in ends:
        (ch.receive if ch.our_role is _C else ch.send)(BatchDone(RID, written=2, bytes=7))
    assert ends[0].done and ends[1].done


@pytest.mark.parametrize("late", [FileEnd(RID, sha256="0" * 64), Window(RID, bytes=1), FileInfo(RID, size=1)])
def test_a_batch_has_no_file_end_window_or_file_info(late: object) -> None:
    ch = RequestChannel(_A, RID, RequestKind.BATCH)
    ch.receive(_batch(1))
    with pytest.raises((RemoteProtocolError, LocalProtocolError)) as info:
        (ch.send if isinstance(late, FileInfo) else ch.receive)(late)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.OUT_OF_ORDER  # type: ignore[union-attr]


def test_a_batch_size_that_is_no_integer_opens_no_window() -> None:
    """Validation refuses such a batch; the table only must not fail on it."""
    ch = RequestChannel(_A, RID, RequestKind.BATCH)
    ch.receive(_batch("9", True, -4, 2))
    assert ch.stdin_credit == 2


def test_a_window_the_agent_sent_before_reading_file_end_may_cross_it() -> None:
    ch = RequestChannel(_C, RID, RequestKind.PUT)
    ch.send(PutFile(RID, path="/f", size=4))
    ch.receive(FileInfo(RID, size=4, window=4))
    ch.send(FileData(RID, b"abcd"))
    ch.send(FileEnd(RID, sha256="0" * 64))
    ch.receive(Window(RID, bytes=4))
    assert ch.state is RequestState.FINISHING and not ch.can_send(MessageType.FILE_DATA)


# -- tree requests and jobs ------------------------------------------------------


def test_a_listing_runs_until_the_tree_entries_that_says_done() -> None:
    ends = _play(RequestKind.LIST, [(_C, ListTree(RID, path="/t")), (_A, TreeEntries(RID, entries=[{"path": "a"}])),
                                    (_A, TreeEntries(RID, entries=[{"path": "b"}]))])
    assert ends[0].state is ends[1].state is RequestState.RUNNING
    for ch in ends:
        (ch.receive if ch.our_role is _C else ch.send)(TreeEntries(RID, done=True))
    assert ends[0].done and ends[1].done


def test_a_listing_may_be_one_last_part_and_then_takes_nothing() -> None:
    ch = RequestChannel(_C, RID, RequestKind.LIST)
    ch.send(ListTree(RID, path="/t"))
    ch.receive(TreeEntries(RID, entries=[{"path": "a"}], done=True))
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive(TreeEntries(RID, entries=[{"path": "b"}]))
    assert info.value.code == ErrorCode.OUT_OF_ORDER
    assert "TREE_ENTRIES with done false from the agent is not legal for request 7 in state done" in str(info.value)


def test_a_bare_tree_entries_type_says_nothing_and_is_refused() -> None:
    """The table knows TREE_ENTRIES only by what it says: a caller must pass the message."""
    ch = channel_in(RequestState.STARTING, _C, RequestKind.LIST)
    with pytest.raises(RemoteProtocolError) as info:
        ch.receive_data(MessageType.TREE_ENTRIES, 0)
    assert info.value.code == ErrorCode.OUT_OF_ORDER


@pytest.mark.parametrize(("kind", "opening", "reply"), [
    (RequestKind.REMOVE, RemovePaths(RID, tree="/t", paths=["a"]), Removed(RID, count=1)),
    (RequestKind.JOBS, JobsList(RID), JobsReply(RID, jobs=[])),
    (RequestKind.KILL, JobKill(RID, job="j"), JobKilled(RID, job="j", processes=1)),
], ids=["remove", "jobs", "kill"])
def test_one_reply_requests_end_at_their_reply(kind: RequestKind, opening: object, reply: object) -> None:
    ends = _play(kind, [(_C, opening), (_A, reply)])
    assert ends[0].done and ends[1].done
    with pytest.raises(RemoteProtocolError) as info:
        ends[0].receive(reply)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.OUT_OF_ORDER

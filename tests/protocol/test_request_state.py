"""The command request state machine (shoal.protocol.request), checked against its table.

Every state x message type x sending role x keeping end: legal messages move to the
table's next state, everything else is `out_of_order`, ours as LocalProtocolError and
the peer's as RemoteProtocolError. Then the windows, both directions.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from shoal.protocol.connection import Role
from shoal.protocol.defaults import OUTPUT_WINDOW
from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.messages import (Error, Exec, Exit, JobAttach, JobStarted, MessageType, Signal, Started,
                                     Stderr, Stdin, StdinEof, Stdout, Window)
from shoal.protocol.request import TRANSITIONS, RequestChannel, RequestState
from tests.protocol.statetable import BIG, check_message_in_state, doc_table, step
from tests.protocol.statetable import channel_in as generic_channel_in

RID = 7
_C, _A = Role.CONTROLLER, Role.AGENT

# The shortest legal way into each state: (sender, type) steps from IDLE.
_PATH = {
    RequestState.IDLE: [],
    RequestState.STARTING: [(_C, MessageType.EXEC)],
    RequestState.RUNNING: [(_C, MessageType.EXEC), (_A, MessageType.STARTED)],
    RequestState.DONE: [(_C, MessageType.EXEC), (_A, MessageType.STARTED), (_A, MessageType.EXIT)],
}


def _step(ch: RequestChannel, sender: Role, type_: MessageType, amount: int = 0) -> None:
    step(ch, sender, type_, amount)


def channel_in(state: RequestState, our_role: Role) -> RequestChannel:
    ch = generic_channel_in(RequestChannel, _PATH, state, our_role, RID)  # type: ignore[arg-type]
    assert isinstance(ch, RequestChannel)
    return ch


def test_the_table_names_every_state_and_role() -> None:
    assert set(TRANSITIONS) == set(itertools.product(RequestState, Role))


@pytest.mark.parametrize("our_role", list(Role))
@pytest.mark.parametrize("sender", list(Role))
@pytest.mark.parametrize("type_", list(MessageType))
@pytest.mark.parametrize("state", list(RequestState))
def test_every_message_in_every_state_follows_the_table(state: RequestState, type_: MessageType, sender: Role,
                                                         our_role: Role) -> None:
    check_message_in_state(RequestChannel, _PATH, state, type_, sender, our_role, RID)  # type: ignore[arg-type]


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


def test_protocol_md_states_the_same_table() -> None:
    doc = Path(__file__).resolve().parents[2].joinpath("protocol", "PROTOCOL.md").read_text()
    section = doc[doc.index("**Command request states.**"):].split("\n\n")[1]  # that table only
    assert doc_table(section, RequestState) == TRANSITIONS


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

"""A relayed stream's state machine (shoal.protocol.relay), its windows, and PROTOCOL.md's
table and worked example of it.

Every state x message type x sending role x keeping end: legal messages move to the
table's next state, everything else is `out_of_order`, ours as LocalProtocolError and
the peer's as RemoteProtocolError.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from shoal.protocol.codec import decode_body
from shoal.protocol.connection import Role
from shoal.protocol.defaults import RELAY_WINDOW
from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.fields import check_request
from shoal.protocol.errors import BadRequestError
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.messages import (Error, MessageType, RelayClose, RelayData, RelayEof, RelayOpen, RelayOpened,
                                     Window)
from shoal.protocol.relay import TRANSITIONS, RelayChannel, RelayState
from tests.protocol.statetable import BIG, check_message_in_state, doc_table, step
from tests.protocol.statetable import channel_in as generic_channel_in

RID = 5
_C, _A = Role.CONTROLLER, Role.AGENT
DOC = Path(__file__).resolve().parents[2].joinpath("protocol", "PROTOCOL.md").read_text()

_PATH = {
    RelayState.IDLE: [],
    RelayState.OPENING: [(_C, MessageType.RELAY_OPEN)],
    RelayState.OPEN: [(_C, MessageType.RELAY_OPEN), (_A, MessageType.RELAY_OPENED)],
    RelayState.DONE: [(_C, MessageType.RELAY_OPEN), (_A, MessageType.RELAY_OPENED), (_A, MessageType.RELAY_CLOSE)],
}


def _step(ch: RelayChannel, sender: Role, type_: MessageType, amount: int = 0) -> None:
    step(ch, sender, type_, amount)


def channel_in(state: RelayState, our_role: Role) -> RelayChannel:
    ch = generic_channel_in(RelayChannel, _PATH, state, our_role, RID)  # type: ignore[arg-type]
    assert isinstance(ch, RelayChannel)
    return ch


def test_the_table_names_every_state_and_role() -> None:
    assert set(TRANSITIONS) == set(itertools.product(RelayState, Role))


@pytest.mark.parametrize("our_role", list(Role))
@pytest.mark.parametrize("sender", list(Role))
@pytest.mark.parametrize("type_", list(MessageType))
@pytest.mark.parametrize("state", list(RelayState))
def test_every_message_in_every_state_follows_the_table(state: RelayState, type_: MessageType, sender: Role,
                                                         our_role: Role) -> None:
    check_message_in_state(RelayChannel, _PATH, state, type_, sender, our_role, RID)  # type: ignore[arg-type]


def test_a_stream_in_messages_on_both_ends() -> None:
    ends = [RelayChannel(_C, RID), RelayChannel(_A, RID)]
    script = [(_C, RelayOpen(RID, host="web7", port=8470, window=10)), (_A, RelayOpened(RID, window=4)),
              (_C, RelayData(RID, b"abcd")), (_A, Window(RID, bytes=4)), (_A, RelayData(RID, b"0123456789")),
              (_C, Window(RID, bytes=6)), (_C, RelayEof(RID)), (_A, RelayData(RID, b"xyz")), (_A, RelayEof(RID)),
              (_A, RelayClose(RID, reason=""))]
    for sender, msg in script:
        for ch in ends:
            (ch.send if ch.our_role is sender else ch.receive)(msg)
        assert ends[0].state is ends[1].state
        assert ends[0].credit == ends[1].credit
    assert ends[0].done and ends[1].done
    assert ends[0].credit == {_C: 4, _A: 3}


@pytest.mark.parametrize("sender", list(Role))
def test_data_past_the_window_is_window_exceeded_and_a_grant_reopens_it(sender: Role) -> None:
    ch = RelayChannel(_A if sender is _C else _C, RID)  # the receiving end
    _step(ch, _C, MessageType.RELAY_OPEN, 8)
    _step(ch, _A, MessageType.RELAY_OPENED, 8)
    _step(ch, sender, MessageType.RELAY_DATA, 8)
    with pytest.raises(RemoteProtocolError) as info:
        _step(ch, sender, MessageType.RELAY_DATA, 1)
    assert info.value.code == ErrorCode.WINDOW_EXCEEDED
    _step(ch, _A if sender is _C else _C, MessageType.WINDOW, 1)
    _step(ch, sender, MessageType.RELAY_DATA, 1)


@pytest.mark.parametrize("sender", list(Role))
def test_after_its_eof_a_side_sends_no_data_and_the_other_side_still_does(sender: Role) -> None:
    ch = channel_in(RelayState.OPEN, _C)
    other = _A if sender is _C else _C
    _step(ch, sender, MessageType.RELAY_EOF)
    for type_ in (MessageType.RELAY_DATA, MessageType.RELAY_EOF):
        error = LocalProtocolError if sender is _C else RemoteProtocolError
        with pytest.raises(error) as info:
            _step(ch, sender, type_, 1)
        assert info.value.code == ErrorCode.OUT_OF_ORDER
    assert not ch.can_send(MessageType.RELAY_DATA) or sender is _A
    _step(ch, other, MessageType.RELAY_DATA, 1)
    _step(ch, sender, MessageType.WINDOW, 1)  # it still grants
    _step(ch, sender, MessageType.RELAY_CLOSE)
    assert ch.done


def test_open_windows_of_zero_mean_the_default() -> None:
    ch = RelayChannel(_A, RID)
    ch.receive(RelayOpen(RID, path="/run/a.sock"))
    ch.send(RelayOpened(RID))
    assert ch.credit == {_C: RELAY_WINDOW, _A: RELAY_WINDOW}


def test_a_refused_open_and_an_abandoned_one_end_the_stream() -> None:
    refused = channel_in(RelayState.OPENING, _C)
    refused.receive(Error(RID, code=ErrorCode.PERMISSION_DENIED, message="no", status=255))
    abandoned = channel_in(RelayState.OPENING, _C)
    abandoned.send(RelayClose(RID))
    assert refused.done and abandoned.done


@pytest.mark.parametrize("fields, error", [
    (dict(port=8470), "exactly one of host and path"),
    (dict(host="a", path="/s", port=1), "exactly one of host and path"),
    (dict(host="a", port=0), "bad relay port"),
    (dict(host="a", port=70000), "bad relay port"),
    (dict(host="a", port=1, window=-1), "bad window"),
    (dict(path="/s", timeout=0.0), "bad timeout"),
])
def test_relay_open_is_checked_at_construction(fields: dict[str, object], error: str) -> None:
    with pytest.raises(LocalProtocolError, match=error):
        RelayOpen(RID, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("msg, field", [
    (RelayOpen(RID, host="a\0b", port=1), "host"),
    (RelayOpen(RID, host="", port=1), "host"),
    (RelayOpen(RID, path="relative.sock"), "path"),
    (RelayOpen(RID, path="/a\0b"), "path"),
    (RelayOpen(RID, host="a", port=1, timeout=1e9), "timeout"),
])
def test_relay_open_fields_are_checked_by_the_agent(msg: RelayOpen, field: str) -> None:
    with pytest.raises(BadRequestError) as info:
        check_request(msg)
    assert info.value.field == field


def test_protocol_md_states_the_same_table() -> None:
    assert doc_table(DOC[DOC.index("**Relay states.**"):].split("\n\n")[1], RelayState) == TRANSITIONS


def test_the_worked_example_decodes_as_described() -> None:
    section = DOC[DOC.index("### Relays"):DOC.index("### Liveness")]
    frames = b"".join(bytes.fromhex(block.strip().splitlines()[0]) for block in section.split("```")[1::2])
    dec = FrameDecoder()
    dec.feed(frames)
    got = []
    while (frame := dec.next_frame()) is not None:
        got.append(decode_body(frame.type, frame.request_id, frame.body))
    assert got == [RelayOpen(RID, host="web7", port=8470, window=65536),
                   RelayOpened(RID, window=262144, address="10.1.0.7:8470"),
                   RelayData(RID, bytes.fromhex("0000009401000000007b2270726f746f")),
                   RelayClose(RID, reason="")]


@pytest.mark.parametrize("msg", [
    RelayOpen(RID, host="10.1.0.7", port=8470, window=65536, timeout=2.5),
    RelayOpen(RID, path="/run/shoal.sock"),
    RelayOpened(RID, window=1, address="[fd00::7]:8470"),
    RelayData(RID, b"\x00\xff" * 3),
    RelayEof(RID),
    RelayClose(RID, reason="connection reset by peer"),
], ids=lambda m: m.TYPE.name)
def test_round_trip(msg: object) -> None:
    from shoal.protocol.codec import encode_body
    from shoal.protocol.messages import Message

    assert isinstance(msg, Message)
    assert decode_body(msg.TYPE, msg.request_id, encode_body(msg)) == msg

"""A relayed stream as both ends keep it (RequestKind.RELAY in shoal.protocol.request): its
windows each way, its messages' fields, and PROTOCOL.md's worked example of it.

Every state x message x role of the relay table is checked with the other kinds' in
test_request_state.py, against PROTOCOL.md's "relay state" table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.protocol.codec import decode_body, encode_body
from shoal.protocol.connection import Role
from shoal.protocol.defaults import RELAY_WINDOW
from shoal.protocol.errors import BadRequestError, ErrorCode, LocalProtocolError, RemoteProtocolError
from shoal.protocol.fields import check_request
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.messages import Error, Message, MessageType, RelayClose, RelayData, RelayOpen, RelayOpened, Window
from shoal.protocol.request import RequestChannel, RequestKind, RequestState

RID = 5
_C, _A = Role.CONTROLLER, Role.AGENT
DOC = Path(__file__).resolve().parents[2].joinpath("protocol", "PROTOCOL.md").read_text()


def relay(our_role: Role) -> RequestChannel:
    return RequestChannel(our_role, RID, RequestKind.RELAY)


def test_a_stream_in_messages_on_both_ends() -> None:
    ends = [relay(_C), relay(_A)]
    script = [(_C, RelayOpen(RID, host="web7", port=8470, window=10)), (_A, RelayOpened(RID, window=4)),
              (_C, RelayData(RID, b"abcd")), (_A, Window(RID, bytes=4)), (_A, RelayData(RID, b"0123456789")),
              (_C, Window(RID, bytes=6)), (_A, RelayData(RID, b"xyz")), (_A, RelayClose(RID, reason=""))]
    for sender, msg in script:
        for ch in ends:
            (ch.send if ch.our_role is sender else ch.receive)(msg)
        assert ends[0].state is ends[1].state
        assert (ends[0].output_credit, ends[0].stdin_credit) == (ends[1].output_credit, ends[1].stdin_credit)
    assert ends[0].done and ends[1].done
    assert (ends[0].output_credit, ends[0].stdin_credit) == (3, 4)
    assert (ends[0].send_credit, ends[1].send_credit) == (4, 3)


def test_data_past_its_window_is_window_exceeded_either_way_and_a_grant_reopens_it() -> None:
    gateway, controller = relay(_A), relay(_C)
    for ch in (gateway, controller):
        (ch.receive if ch is gateway else ch.send)(RelayOpen(RID, host="web7", port=8470, window=8))
        (ch.send if ch is gateway else ch.receive)(RelayOpened(RID, window=8))
        peer = _C if ch is gateway else _A
        ch.receive_data(MessageType.RELAY_DATA, 8)  # the peer used its whole window
        with pytest.raises(RemoteProtocolError) as info:
            ch.receive_data(MessageType.RELAY_DATA, 1)
        assert info.value.code == ErrorCode.WINDOW_EXCEEDED, peer
        ch.send_data(MessageType.WINDOW, 1)
        ch.receive_data(MessageType.RELAY_DATA, 1)
        ch.send_data(MessageType.RELAY_DATA, 8)  # and ours, the same
        with pytest.raises(LocalProtocolError):
            ch.send_data(MessageType.RELAY_DATA, 1)


def test_open_windows_of_zero_mean_the_default() -> None:
    ch = relay(_A)
    ch.receive(RelayOpen(RID, path="/run/a.sock"))
    ch.send(RelayOpened(RID))
    assert (ch.output_credit, ch.stdin_credit) == (RELAY_WINDOW, RELAY_WINDOW)


def test_a_refused_open_and_an_abandoned_one_end_the_stream() -> None:
    refused, abandoned = relay(_C), relay(_C)
    for ch in (refused, abandoned):
        ch.send(RelayOpen(RID, host="web7", port=8470))
        assert ch.state is RequestState.STARTING and not ch.can_send(MessageType.RELAY_DATA)
    refused.receive(Error(RID, code=ErrorCode.PERMISSION_DENIED, message="no", status=255))
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


@pytest.mark.parametrize("msg", [
    RelayOpen(RID, host="10.1.0.7", port=8470, window=65536, timeout=2.5),
    RelayOpen(RID, path="/run/shoal.sock"),
    RelayOpened(RID, window=1, address="[fd00::7]:8470"),
    RelayData(RID, b"\x00\xff" * 3),
    RelayClose(RID, reason="connection reset by peer"),
], ids=lambda m: m.TYPE.name)
def test_round_trip(msg: Message) -> None:
    assert decode_body(msg.TYPE, msg.request_id, encode_body(msg)) == msg


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

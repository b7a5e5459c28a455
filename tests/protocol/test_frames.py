"""Frame splitting: boundaries never depend on how bytes are chunked."""

from __future__ import annotations

import os
import struct

import pytest

from shoal.protocol.errors import RemoteProtocolError
from shoal.protocol.frames import HEAD_SIZE, TAG_SIZE, FrameDecoder, frame_head


def frame(type_: int, rid: int, body: bytes) -> bytes:
    return frame_head(type_, rid, len(body), False) + body


STREAM = b"".join([
    frame(0x21, 1, b"hello"),
    frame(0x22, 1, b""),
    frame(0x21, 7, os.urandom(3000)),
    frame(0x23, 1, b'{"status":0}'),
])


def pull_all(dec: FrameDecoder) -> list[tuple[int, int, bytes]]:
    out = []
    while (f := dec.next_frame()) is not None:
        out.append((f.type, f.request_id, f.body))
    return out


def test_whole_stream_gives_every_frame_in_order() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM)
    got = pull_all(dec)
    assert [(t, r) for t, r, _ in got] == [(0x21, 1), (0x22, 1), (0x21, 7), (0x23, 1)]
    assert got[0][2] == b"hello" and got[1][2] == b"" and len(got[2][2]) == 3000


def test_every_split_point_gives_the_same_frames() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM)
    expected = pull_all(dec)
    for cut in range(1, len(STREAM)):
        dec = FrameDecoder()
        dec.feed(STREAM[:cut])
        got = pull_all(dec)
        dec.feed(STREAM[cut:])
        got += pull_all(dec)
        assert got == expected, cut


def test_byte_by_byte_gives_the_same_frames() -> None:
    dec = FrameDecoder()
    got = []
    for i in range(len(STREAM)):
        dec.feed(STREAM[i:i + 1])
        got += pull_all(dec)
    ref = FrameDecoder()
    ref.feed(STREAM)
    assert got == pull_all(ref)


def test_oversize_length_rejected_before_any_body_arrives() -> None:
    dec = FrameDecoder(max_body=1024)
    dec.feed(struct.pack(">I", 5 + 1025))  # only the length field, no body at all
    with pytest.raises(RemoteProtocolError) as err:
        dec.next_frame()
    assert err.value.code == "frame_too_large"


def test_one_gib_header_rejected_on_first_four_bytes() -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack(">I", 1 << 30))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_length_shorter_than_head_is_garbage() -> None:
    dec = FrameDecoder()
    dec.feed(struct.pack(">I", 3) + b"abc")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_http_request_is_rejected_as_garbage() -> None:
    dec = FrameDecoder()
    dec.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_half_frame_at_eof_is_the_peers_error() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM[:HEAD_SIZE + 2])
    assert dec.next_frame() is None
    dec.feed(b"")
    with pytest.raises(RemoteProtocolError) as err:
        dec.next_frame()
    assert err.value.code == "truncated"


def test_clean_eof_is_not_an_error() -> None:
    dec = FrameDecoder()
    dec.feed(STREAM)
    pull_all(dec)
    dec.feed(b"")
    assert dec.next_frame() is None and dec.at_eof


def test_tagged_frame_too_short_for_a_mac_is_rejected() -> None:
    dec = FrameDecoder()
    dec.tagged = True
    dec.feed(frame(0x21, 1, b"x" * (TAG_SIZE - 1)))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_random_garbage_gives_frames_or_protocol_errors_only() -> None:
    rng = __import__("random").Random(1234)
    for _ in range(300):
        dec = FrameDecoder(max_body=4096)
        dec.feed(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))))
        try:
            while dec.next_frame() is not None:
                pass
        except RemoteProtocolError:
            pass


def test_read_space_starts_small_and_grows_while_reads_fill_it() -> None:
    d = FrameDecoder()
    first = len(d.get_buffer())
    assert first == FrameDecoder.FIRST_READ_SIZE
    d.buffer_updated(first // 2)  # a partial read: no growth
    assert len(d.get_buffer()) == first
    sizes = []
    for _ in range(4):  # reads that fill what was offered (zeros: never a whole frame)
        d.buffer_updated(len(d.get_buffer()))
        sizes.append(len(d.get_buffer()))
    assert first < sizes[0] and sizes[-1] == FrameDecoder.READ_SIZE and sizes == sorted(sizes)

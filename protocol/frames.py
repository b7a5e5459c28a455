"""Length-prefixed frames: the byte layout under every message.

A frame is a 9-byte head followed by a body and, once a session is authenticated,
a 32-byte MAC tag:

    u32be length      bytes after this field: 5 + len(body) [+ 32]
    u8    type        a `MessageType`
    u32be request id  0 for connection-level messages
    body              raw bytes or a UTF-8 JSON object, per type
    [tag]             HMAC-SHA256, see handshake.FrameMac

The length comes first so a reader never depends on how TCP splits or joins
segments; it is checked against the limit before a single body byte is buffered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEAD",
    "HEAD_SIZE",
    "TAG_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "MIN_MAX_FRAME_SIZE",
    "RawFrame",
    "FrameDecoder",
    "frame_head",
]

HEAD = struct.Struct(">IBI")
HEAD_SIZE = HEAD.size  # 9
# Bytes of the head that the length field counts (type + request id).
_COUNTED_HEAD = HEAD_SIZE - 4
TAG_SIZE = 32

# Largest body we accept by default: big enough that streaming output moves in
# 1 MiB chunks with room to spare, small enough that a hostile peer cannot make
# us buffer much before we notice.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
# Below this, JSON control messages (env, argv) could no longer fit.
MIN_MAX_FRAME_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as read off the wire, before the body is interpreted."""

    type: int
    request_id: int
    body: bytes
    head: bytes
    tag: bytes | None = None


def frame_head(type_: int, request_id: int, body_len: int, tagged: bool) -> bytes:
    """Pack the 9-byte head for a body of `body_len` bytes."""
    if not 0 <= request_id <= 0xFFFFFFFF:
        raise LocalProtocolError(f"request id {request_id} out of range")
    length = _COUNTED_HEAD + body_len + (TAG_SIZE if tagged else 0)
    return HEAD.pack(length, type_, request_id)


class FrameDecoder:
    """Incremental frame splitter: feed any chunks, pull complete frames.

    `tagged` is switched on by the connection once the session keys exist; from
    then on every frame must carry a tag (a frame too short to hold one is an
    error, so a missing MAC can never be mistaken for an empty body).
    """

    def __init__(self, max_body: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_body = max_body
        self.tagged = False
        self._buf = bytearray()
        self._eof = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes; `b""` marks end of stream."""
        if not data:
            self._eof = True
        else:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes waiting to become a frame."""
        return len(self._buf)

    def peek_type(self) -> int | None:
        """The type byte of the next frame, once its head has arrived."""
        return self._buf[4] if len(self._buf) >= 5 else None

    def next_frame(self) -> RawFrame | None:
        """Return the next complete frame, or None when more bytes are needed."""
        buf = self._buf
        if len(buf) < 4:
            return self._need_more()
        (length,) = struct.unpack_from(">I", buf)
        self._check_length(length)
        end = 4 + length
        if len(buf) < end:
            return self._need_more()
        _, type_, request_id = HEAD.unpack_from(buf)
        body_end = end - TAG_SIZE if self.tagged else end
        frame = RawFrame(
            type=type_,
            request_id=request_id,
            body=bytes(buf[HEAD_SIZE:body_end]),
            head=bytes(buf[:HEAD_SIZE]),
            tag=bytes(buf[body_end:end]) if self.tagged else None,
        )
        del buf[:end]
        return frame

    def _check_length(self, length: int) -> None:
        overhead = _COUNTED_HEAD + (TAG_SIZE if self.tagged else 0)
        if length < overhead:
            what = "too short to carry its MAC" if self.tagged else "shorter than its head"
            raise RemoteProtocolError(f"frame length {length} is {what}", "bad_frame")
        if length - overhead > self.max_body:
            raise RemoteProtocolError(
                f"frame body of {length - overhead} bytes exceeds the limit of {self.max_body}",
                "frame_too_large",
            )

    def _need_more(self) -> None:
        if self._eof and self._buf:
            raise RemoteProtocolError(
                f"connection closed in the middle of a frame ({len(self._buf)} bytes pending)",
                "truncated",
            )
        return None

    @property
    def at_eof(self) -> bool:
        """True once EOF was fed and every complete frame has been pulled."""
        return self._eof and not self._buf

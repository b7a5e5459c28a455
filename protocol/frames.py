"""Length-prefixed frames: the byte layout under every message.

A frame is a 9-byte head followed by a body and, once a session is authenticated,
a 16-byte MAC tag:

    u32be length      bytes after this field: 5 + len(body) [+ 16]
    u8    type        a `MessageType`
    u32be request id  0 for connection-level messages
    body              raw bytes or a UTF-8 JSON object, per type
    [tag]             the negotiated frame MAC (AES-256-GMAC or HMAC-SHA256-128),
                      see handshake.FrameMac and handshake.GmacFrameMac

The length comes first so a reader never depends on how TCP splits or joins
segments; it is checked against the limit before a single body byte is buffered.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from shoal.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEAD",
    "HEAD_SIZE",
    "TAG_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "MIN_MAX_FRAME_SIZE",
    "PREAUTH_MAX_FRAME",
    "RawFrame",
    "FrameDecoder",
    "frame_head",
]

HEAD = struct.Struct(">IBI")
HEAD_SIZE = HEAD.size  # 9
# Bytes of the head that the length field counts (type + request id).
_COUNTED_HEAD = HEAD_SIZE - 4
TAG_SIZE = 16

# Largest body we accept by default: big enough that streaming output moves in
# 1 MiB chunks with room to spare, small enough that a hostile peer cannot make
# us buffer much before we notice.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
# Below this, JSON control messages (env, argv) could no longer fit.
MIN_MAX_FRAME_SIZE = 64 * 1024
# The most either end may configure or a peer's HELLO may announce: a frame is
# buffered whole before it is checked, so this bounds what one peer can make us hold.
MAX_FRAME_SIZE_CEILING = 16 * 1024 * 1024
# Largest body accepted before the handshake completes, in bytes. HELLO, AUTH and
# ERROR are well under 1 KiB; without this cap anyone who can connect could make
# the agent buffer a whole `max_frame` per connection without holding any key.
PREAUTH_MAX_FRAME = 4 * 1024


# A receive buffer up to this size is kept between frames: it holds one standard
# 1 MiB data frame, so bulk streams never reallocate; larger ones are given back.
_KEEP_BUFFER = 2 * 1024 * 1024 + 4096


class RawFrame(NamedTuple):
    """One frame as read off the wire, before the body is interpreted (a tuple: one is
    built per frame received, at a quarter of a frozen dataclass's cost)."""

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

    Two ways to feed it: `feed(data)` copies bytes in; `get_buffer()` and
    `buffer_updated(n)` let a transport read straight into our buffer (asyncio's
    BufferedProtocol), so bulk output costs one copy out per frame body and none
    on the way in.

    `tagged` is switched on by the connection once the session keys exist; from
    then on every frame must carry a tag (a frame too short to hold one is an
    error, so a missing MAC can never be mistaken for an empty body).
    """

    # Smallest free space handed to a reader; large reads amortise per-call costs.
    READ_SIZE = 256 * 1024
    # A new connection starts with this much and grows towards READ_SIZE each time a
    # read fills all the space offered: a controller holding 500 quiet connections
    # should not pin 500 x 256 KiB, while a bulk stream reaches full size in two reads.
    FIRST_READ_SIZE = 16 * 1024

    def __init__(self, max_body: int = DEFAULT_MAX_FRAME_SIZE, read_size: int = FIRST_READ_SIZE) -> None:
        self.max_body = max_body
        # Reads grow up to this; the connection keeps it at `read_size` until the
        # peer has authenticated, so an unauthenticated peer never gets a big buffer.
        self.max_read_size = self.READ_SIZE
        self.tagged = False
        self._read_size = read_size
        self._offered = 0
        self._buf = bytearray(self._read_size)
        self._start = 0  # first unconsumed byte
        self._end = 0    # end of valid data
        self._eof = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes; `b""` marks end of stream."""
        if not data:
            self._eof = True
            return
        view = self.get_buffer(len(data))
        view[: len(data)] = data
        self.buffer_updated(len(data))

    def get_buffer(self, size_hint: int = -1) -> memoryview:
        """Free space to read into: at least `size_hint` bytes (or READ_SIZE),
        and room for the whole of the frame being received when its length is known."""
        pending = self._end - self._start
        want = max(size_hint, self._read_size, self._frame_size() - pending)
        if len(self._buf) - self._end < want:
            self._make_room(pending, want)
        self._offered = len(self._buf) - self._end
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the last `get_buffer()` view."""
        self._end += nbytes
        if nbytes >= self._offered and self._read_size < self.max_read_size:
            self._read_size = min(self.max_read_size, self._read_size * 4)

    def _frame_size(self) -> int:
        if self._end - self._start < 4:
            return 0
        length: int = struct.unpack_from(">I", self._buf, self._start)[0]
        return 4 + min(length, self.max_body + HEAD_SIZE + TAG_SIZE)

    def _make_room(self, pending: int, want: int) -> None:
        """Move pending bytes to the front, growing the buffer only when needed."""
        if len(self._buf) < pending + want:
            new = bytearray(pending + want)
            new[:pending] = memoryview(self._buf)[self._start:self._end]
            self._buf = new
        else:
            self._buf[:pending] = self._buf[self._start:self._end]
        self._start, self._end = 0, pending

    def next_frame(self) -> RawFrame | None:
        """Return the next complete frame, or None when more bytes are needed."""
        start, avail = self._start, self._end - self._start
        if avail < 4:
            self._check_truncation()
            return None
        (length,) = struct.unpack_from(">I", self._buf, start)
        self._check_length(length)
        if avail < 4 + length:
            self._check_truncation()
            return None
        end = start + 4 + length
        _, type_, request_id = HEAD.unpack_from(self._buf, start)
        body_end = end - TAG_SIZE if self.tagged else end
        with memoryview(self._buf) as view:
            frame = RawFrame(type_, request_id, bytes(view[start + HEAD_SIZE:body_end]),
                             bytes(view[start:start + HEAD_SIZE]), bytes(view[body_end:end]) if self.tagged else None)
        self._start = end
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > _KEEP_BUFFER:
                self._buf = bytearray(self.READ_SIZE)  # give back a big frame's room
        return frame

    def _check_length(self, length: int) -> None:
        overhead = _COUNTED_HEAD + (TAG_SIZE if self.tagged else 0)
        if length < overhead:
            what = "too short to carry its MAC" if self.tagged else "shorter than its head"
            raise RemoteProtocolError(f"frame length {length} is {what}", ErrorCode.BAD_FRAME)
        if length - overhead > self.max_body:
            raise RemoteProtocolError(
                f"frame body of {length - overhead} bytes exceeds the limit of {self.max_body}",
                ErrorCode.FRAME_TOO_LARGE,
            )

    def _check_truncation(self) -> None:
        if self._eof and self._end > self._start:
            raise RemoteProtocolError(
                f"connection closed in the middle of a frame ({self._end - self._start} bytes pending)",
                ErrorCode.TRUNCATED,
            )
        return None

    @property
    def at_eof(self) -> bool:
        """True once EOF was fed and every complete frame has been pulled."""
        return self._eof and self._end == self._start

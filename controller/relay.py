"""A byte stream to a target through a gateway, as an asyncio transport.

The target's `AgentClient` runs over a `RelayStream` exactly as over a socket: its
handshake, frame MACs and requests are unchanged, and with TLS `loop.start_tls`
wraps the stream, so the gateway forwards bytes it can neither read nor alter
undetected. The stream is also a request on the gateway's own connection (the
link, another `AgentClient`): the link routes the stream's RELAY_* and WINDOW
frames to `receive`, and tells it `lost` when the link drops.

Flow control is per stream (PROTOCOL.md §3 Relays, `RequestKind.RELAY` in
`shoal.protocol.request`): we send
only within the window the gateway granted, keeping the rest in `_outbox` (the
writer is paused above the high-water mark, as a socket pauses it), and grant the
gateway more as the client takes the bytes, so one slow target never holds up the
link's other streams.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from shoal.protocol.connection import Role
from shoal.protocol.errors import (ErrorCode, RemoteCommandError, RemoteProtocolError, ShoalConnectionError,
                                   ShoalError)
from shoal.protocol.messages import Error, Message, MessageType, RelayClose, RelayData, RelayOpen, RelayOpened, Window
from shoal.protocol.request import RequestChannel, RequestKind, RequestState

from shoal.hostio.writev import WRITE_BUFFER_HIGH
from shoal.controller.targets import Target

if TYPE_CHECKING:
    from shoal.controller.client import AgentClient

__all__ = ["RelayStream", "RECEIVE_WINDOW"]

# RELAY_DATA bytes the gateway may send us per stream before we grant more. The
# client takes them as they come, so this only has to cover the round trip.
RECEIVE_WINDOW = 1024 * 1024


class RelayStream(asyncio.Transport):
    """One relayed stream: opened with `open()`, then a transport for the target's client.

    Args:
        link: the authenticated connection to the gateway.
        gateway: the gateway's name, for messages.
        target: where the gateway is asked to connect.
    """

    # loop.start_tls may wrap this transport: TLS with the target, end to end.
    _start_tls_compatible = True

    def __init__(self, link: AgentClient, gateway: str, target: Target) -> None:
        super().__init__({"peername": None, "gateway": gateway})
        self.link = link
        self.gateway = gateway
        self.target = target
        self.request_id = link.new_request_id()
        self.channel = RequestChannel(Role.CONTROLLER, self.request_id, RequestKind.RELAY)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._protocol: asyncio.BaseProtocol | None = None
        self._outbox: deque[bytes] = deque()
        self._outbox_size = 0
        self._high, self._low = WRITE_BUFFER_HIGH, WRITE_BUFFER_HIGH // 4
        self._writing_paused = False
        self._reading = True
        self._inbox: deque[bytes] = deque()  # bytes arrived while reading is paused (within our window)
        # Once the gateway closed the stream: None (the target closed it) or why it ended.
        self._inbox_end: BaseException | None | bool = False
        self._to_grant = 0
        self._closing = False
        self._finished = False

    def open(self, timeout: float | None) -> None:
        """Ask the gateway for the stream; `opened` resolves, or fails with a ShoalError."""
        t = self.target
        msg = RelayOpen(self.request_id, host=t.host, port=t.port if t.host is not None else 0, path=t.path,
                        window=RECEIVE_WINDOW, timeout=timeout)
        self.channel.send(msg)
        self.link.requests[self.request_id] = self
        self.link.send(msg)

    # -- from the link -------------------------------------------------------------

    def receive(self, msg: Message) -> None:
        """A frame the gateway sent under this stream's id."""
        try:
            self.channel.receive(msg)
        except RemoteProtocolError as exc:  # a broken gateway: its link, and every stream on it, ends
            self.link.protocol_violation(f"gateway broke relay {self.request_id}: {exc}", exc.code)
            return
        if isinstance(msg, RelayData):
            self._arrived(msg.data)
        elif isinstance(msg, Window):
            self._pump()
        elif isinstance(msg, RelayOpened):
            if not self.opened.done():
                self.opened.set_result(None)
            self._pump()
        elif isinstance(msg, RelayClose):  # the target's connection ended: after its last bytes
            self._forget()
            self._inbox_end = ConnectionResetError(f"{msg.reason} (relayed by {self.gateway})") if msg.reason else None
            self._deliver()
        elif isinstance(msg, Error):
            self._finish(self._refusal(msg))

    def lost(self, reason: str, code: str = "") -> None:
        """The link to the gateway dropped: so did this stream."""
        self.channel.connection_lost()
        why = f"via {self.gateway}: {reason}"
        self._finish(ConnectionResetError(why) if self.opened.done() else ShoalConnectionError(self.target.name, why))

    def _refusal(self, msg: Error) -> ShoalError:
        """The gateway's answer to RELAY_OPEN, as the error the target's connect raises."""
        host = self.target.name
        if msg.code == ErrorCode.PERMISSION_DENIED:
            return RemoteCommandError(f"via {self.gateway}: {msg.message}", msg.code, host, status=msg.status or 255)
        if msg.code == ErrorCode.RELAY_FAILED:
            return ShoalConnectionError(host, f"{msg.message} (relayed by {self.gateway})")
        return ShoalConnectionError(host, f"via {self.gateway}: {msg.code}: {msg.message}")

    # -- towards the client (what a socket would deliver) ----------------------------

    def _arrived(self, data: bytes) -> None:
        self._inbox.append(data)
        self._deliver()

    def _deliver(self) -> None:
        """Hand waiting bytes (then EOF) to the protocol while it reads, granting them back."""
        while self._inbox and self._reading and self._protocol is not None and not self._closing:
            data = self._inbox.popleft()
            self._grant(len(data))
            if not self._feed(data):
                return
        if self._inbox_end is not False and not self._inbox and self._reading and self._protocol is not None:
            end, self._inbox_end = self._inbox_end, False
            if end is None and not self._closing:
                self._protocol.eof_received()  # type: ignore[attr-defined]  # as a socket's EOF
            self._finish(end if isinstance(end, BaseException) else None)

    def _feed(self, data: bytes) -> bool:
        """Give `data` to the protocol as a socket would; False when the protocol failed."""
        proto = self._protocol
        try:
            if isinstance(proto, asyncio.BufferedProtocol):
                view = memoryview(data)
                while view and not self._closing:
                    buf = memoryview(proto.get_buffer(len(view)))
                    n = min(len(buf), len(view))
                    buf[:n] = view[:n]
                    proto.buffer_updated(n)
                    view = view[n:]
            else:
                proto.data_received(data)  # type: ignore[union-attr]
        except Exception as exc:  # as asyncio does for a socket: report, and drop this stream only
            asyncio.get_running_loop().call_exception_handler(
                {"message": "relayed stream's protocol failed on data", "exception": exc, "transport": self,
                 "protocol": proto})
            self._force_close(exc)
            return False
        return True

    def _grant(self, nbytes: int) -> None:
        self._to_grant += nbytes
        if self._to_grant >= RECEIVE_WINDOW // 4 and self.channel.can_send(MessageType.WINDOW):
            grant, self._to_grant = self._to_grant, 0
            self.channel.send_data(MessageType.WINDOW, grant)
            self.link.send(Window(self.request_id, bytes=grant))

    # -- towards the gateway -------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._outbox.append(bytes(data))
        self._outbox_size += len(data)
        self._pump()

    def writelines(self, list_of_data: Any) -> None:
        """Queue every buffer, then send: a frame's head, body and tag travel in one RELAY_DATA."""
        if self._closing:
            return
        for data in list_of_data:
            if data:
                self._outbox.append(bytes(data))
                self._outbox_size += len(data)
        self._pump()

    def _pump(self) -> None:
        """Send what the gateway's window allows."""
        ch = self.channel
        if self.link.closed or ch.state is not RequestState.RUNNING:
            return
        while self._outbox and ch.send_credit > 0 and ch.can_send(MessageType.RELAY_DATA):
            chunk = self._take(min(ch.send_credit, self.link.max_chunk))
            ch.send_data(MessageType.RELAY_DATA, len(chunk))
            self.link.send_data(MessageType.RELAY_DATA, self.request_id, chunk)
        self.link.flush()
        self._writable_changed()

    def _take(self, limit: int) -> bytes:
        """Up to `limit` bytes off the front of the outbox, small writes joined."""
        parts: list[bytes] = []
        size = 0
        while self._outbox and size < limit:
            piece = self._outbox.popleft()
            if size + len(piece) > limit:
                piece, rest = piece[:limit - size], piece[limit - size:]
                self._outbox.appendleft(rest)
            parts.append(piece)
            size += len(piece)
        self._outbox_size -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _writable_changed(self) -> None:
        """Pause the writer above the high-water mark, resume it below the low one, as a socket does."""
        proto = self._protocol
        if proto is None:
            return
        if not self._writing_paused and self._outbox_size > self._high:
            self._writing_paused = True
            proto.pause_writing()
        elif self._writing_paused and self._outbox_size <= self._low:
            self._writing_paused = False
            proto.resume_writing()

    def _send(self, msg: Message) -> None:
        self.channel.send(msg)
        self.link.send(msg)

    # -- the asyncio.Transport interface ----------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._deliver()

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._deliver()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = WRITE_BUFFER_HIGH if high is None else high
        self._low = self._high // 4 if low is None else low
        self._writable_changed()

    def get_write_buffer_size(self) -> int:
        return self._outbox_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def can_write_eof(self) -> bool:
        return False  # a stream is closed whole (RELAY_CLOSE), never half

    def close(self) -> None:
        """Send what the window allows now, then end the stream (the gateway closes the
        target's connection). Bytes still waiting are dropped: a target that stopped
        reading must not keep the stream, and the gateway's buffers, alive."""
        if self._closing:
            return
        self._pump()
        self._closing = True
        self._end(None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        """End the stream at once (also how asyncio's TLS layer gives up on it)."""
        if self._finished:
            return
        self._closing = True
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        self._outbox.clear()
        self._outbox_size = 0
        if self.channel.can_send(MessageType.RELAY_CLOSE) and not self.link.closed:
            self._send(RelayClose(self.request_id))
        self._finish(exc)

    def _forget(self) -> None:
        """The id is done: frames still on their way for it are dropped by the link."""
        if self.link.requests.get(self.request_id) is self:
            del self.link.requests[self.request_id]

    def _finish(self, exc: BaseException | None) -> None:
        """The stream is over: forget its id, fail the open, or tell the protocol (soon, as asyncio does)."""
        if self._finished:
            return
        self._finished = self._closing = True
        self._forget()
        if not self.opened.done():
            error = exc if isinstance(exc, ShoalError) else ShoalConnectionError(
                self.target.name, f"via {self.gateway}: {exc or 'relay closed before it opened'}")
            self.opened.set_exception(error)
            self.opened.exception()  # the dialer may be gone (cancelled): never an unretrieved error
            return
        if self._protocol is not None:
            asyncio.get_running_loop().call_soon(self._protocol.connection_lost, _as_exception(exc))


def _as_exception(exc: BaseException | None) -> Exception | None:
    """What connection_lost is given: None for a clean end, else an exception naming why."""
    if exc is None or isinstance(exc, Exception):
        return exc
    return ConnectionError(str(exc))

"""The one asyncio driver both ends subclass: bytes in, events out, buffers written.

The agent's session and the controller's client differ in what they do with a
message, not in how bytes move. This base owns the moving: the transport reads
straight into the sans-I/O `Connection`'s buffer, every complete event goes to
`dispatch`, and whatever the connection queued goes out with `writev`
(`write_buffers`). It also tunes the socket once and tracks the write buffer's
high-water mark. Subclasses answer four questions: what an event means
(`dispatch`), what a peer breaking the protocol means (`peer_failed`), what a bug
of ours means (`internal_error`) and what a failed write means (`write_failed`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import ClassVar

from shoal.protocol.connection import Connection, HandshakeComplete
from shoal.protocol.errors import AuthError, ProtocolError
from shoal.protocol.messages import Message

from shoal.hostio.writev import WRITE_BUFFER_HIGH, raw_fd, write_buffers

__all__ = ["FrameDriver", "tune_socket"]


class FrameDriver(asyncio.BufferedProtocol):
    """One connection's transport driving one sans-I/O `Connection`.

    Args:
        conn: the protocol state machine this end feeds and drains.
        keepalive: seconds of silence before TCP keepalive probes (also sets the
            probe interval, count and TCP_USER_TIMEOUT); None keeps the kernel's.
    """

    # Whether events are still dispatched once `closed` is set. The controller says
    # yes: replies for requests still open arrive after its close() began.
    dispatch_after_close: ClassVar[bool] = False

    def __init__(self, conn: Connection, keepalive: float | None = None) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.writing_paused = False
        self._fd = -1
        self._tcp_keepalive = keepalive
        self._last_frame = time.monotonic()  # any bytes count: the idle timers measure silence
        self._writable = asyncio.Event()
        self._writable.set()
        self._flush_due = False

    @property
    def last_heard(self) -> float:
        """When the peer last sent any bytes (time.monotonic())."""
        return self._last_frame

    # -- what subclasses decide ------------------------------------------------

    def dispatch(self, event: Message | HandshakeComplete) -> None:
        raise NotImplementedError

    def peer_failed(self, exc: AuthError | ProtocolError) -> None:
        """The peer broke the protocol or failed the handshake; an ERROR may be queued."""
        raise NotImplementedError

    def internal_error(self, exc: Exception) -> None:
        """A bug of ours while dispatching; by default it propagates to the event loop."""
        raise exc

    def write_failed(self, exc: OSError) -> None:
        """The socket refused our bytes; by default the error propagates."""
        raise exc

    # -- transport events ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._fd = raw_fd(transport)
        tune_socket(transport, self._tcp_keepalive)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.buffer_updated(nbytes)
        self.process()

    def eof_received(self) -> bool:
        self.conn.receive_data(b"")
        self.process()
        return False

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._writable.set()

    # -- the loop ----------------------------------------------------------------

    def process(self) -> None:
        """Dispatch every complete event, then write what the connection produced."""
        self._last_frame = time.monotonic()
        try:
            while self.dispatch_after_close or not self.closed:
                event = self.conn.next_event()
                if event is None:
                    break
                self.dispatch(event)
        except (AuthError, ProtocolError) as exc:
            self.peer_failed(exc)
        except Exception as exc:
            self.internal_error(exc)
        self.flush()

    def flush(self) -> None:
        """Write whatever the connection has queued, uncopied."""
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            try:
                write_buffers(self.transport, out, self._fd)
            except OSError as exc:
                self.write_failed(exc)

    def flush_soon(self) -> None:
        """Write what is queued once this turn of the event loop is over: a connection
        many messages are sent on in one turn (a hub fanning one client's request out,
        its replies coming back) then costs one write, not one per message."""
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        self.flush()

    async def drain(self) -> None:
        """Wait while the socket's write buffer is over its high-water mark."""
        await self._writable.wait()


def tune_socket(transport: asyncio.Transport, keepalive: float | None) -> None:
    """No Nagle (small frames go at once) and TCP keepalive to notice dead peers.

    Keepalive probes only run while none of our data awaits an ACK; a peer that
    vanishes while we stream to it is caught by TCP_USER_TIMEOUT, set to the same
    deadline: `keepalive` + 3 probe intervals of `keepalive`/3. Without `keepalive`
    the kernel's keepalive timing stays. Unix sockets are left alone.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if keepalive is None:
        return
    idle = max(1, int(keepalive))
    interval = max(1, idle // 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, (idle + 3 * interval) * 1000)

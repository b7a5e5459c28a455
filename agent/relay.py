"""The agent as a gateway: streams it relays to other agents (issue 19).

A controller that reaches this agent but not the agents behind it sends RELAY_OPEN
(PROTOCOL.md §3 Relays). We check the key's relay policy (its destinations, after
resolving a name, so a name cannot lead past the list), connect, and from then on
copy bytes both ways without reading them: the controller's handshake, frame MACs
and TLS with the destination run inside the stream, end to end, so all we can do
to it is drop it.

Memory is bounded per stream, whatever the destination or the controller do:

- controller → destination: we grant `limits.relay_window` bytes and grant more
  only as the destination's socket takes them, so at most one window waits here
  for a destination that stopped reading, and the controller waits, not the others.
- destination → controller: we read only what the controller granted, at most
  READ_SIZE at a time, and stop reading every destination while our socket to the
  controller is over its high-water mark.

Connects run concurrently, one task each; RELAY_CLOSE or the controller's
disconnect ends a stream, connecting or not. Every open, refusal and end is audited.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import TYPE_CHECKING

from shoal.protocol.connection import Role
from shoal.protocol.errors import BadRequestError, ErrorCode, RemoteProtocolError
from shoal.protocol.fields import check_request
from shoal.protocol.messages import (
    Error,
    Message,
    MessageType,
    RelayClose,
    RelayData,
    RelayOpen,
    RelayOpened,
    Window,
)
from shoal.protocol.request import RequestChannel, RequestKind, RequestState

from shoal.agent.handlers import HandlerTable
from shoal.hostio.driver import tune_socket
from shoal.hostio.neterrors import connect_reason

if TYPE_CHECKING:
    from shoal.agent.session import AgentSession

__all__ = ["relay_handlers", "RelayStream", "READ_SIZE", "DEFAULT_CONNECT_TIMEOUT"]

log = logging.getLogger("shoal.agent")

# Largest read from a destination: what one stream may hold beyond its windows
# while its bytes wait to be framed.
READ_SIZE = 64 * 1024
# How long a connect may take when RELAY_OPEN names no timeout.
DEFAULT_CONNECT_TIMEOUT = 10.0
# Status of a relay's ERROR: the destination could not be reached, as for ssh.
RELAY_STATUS = 255


def relay_handlers(session: AgentSession, relays_class: type[Relays] | None = None) -> HandlerTable:
    """The message handlers relaying adds to a session (for `Agent.handlers`); tests
    pass a `Relays` subclass to make a gateway that misbehaves."""
    relays = (relays_class or Relays)(session)
    table = HandlerTable()
    table.add(RelayOpen, relays.on_open)
    table.add(RelayData, relays.on_data)
    table.add(RelayClose, relays.on_close)
    return table


def _is_address(host: str) -> bool:
    """An IP literal needs no resolver (whose thread hop would cost every relay)."""
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def destination(msg: RelayOpen) -> str:
    """A RELAY_OPEN's destination as logs and audit records name it."""
    if msg.path is not None:
        return f"unix:{msg.path}"
    host = msg.host or ""
    return f"[{host}]:{msg.port}" if ":" in host else f"{host}:{msg.port}"


class Relays:
    """One session's relayed streams: refuse or start them, route their frames."""

    def __init__(self, session: AgentSession) -> None:
        self.session = session
        self.count = 0
        # One read buffer for all of the session's streams (each read is framed,
        # copied out, before the loop reads anything else), made with the first
        # stream: a session that relays nothing must stay small (a pre-auth flood).
        self.read_buffer = bytearray()

    def on_open(self, msg: RelayOpen) -> None:
        s, rid = self.session, msg.request_id
        if rid in s.requests:
            return s.request_error(rid, ErrorCode.DUPLICATE_REQUEST, f"request id {rid} is already in use",
                                   RELAY_STATUS)
        try:
            check_request(msg)
        except BadRequestError as exc:
            return s.request_error(rid, exc.code, f"bad RELAY_OPEN: {exc}", RELAY_STATUS)
        if s.policy is not None and not s.policy.may_relay():
            return self.deny(msg, "relaying not allowed")
        if self.count >= s.limits.max_relays:
            return s.request_error(rid, ErrorCode.LIMIT, f"too many relays on this connection "
                                   f"(limit {s.limits.max_relays})", RELAY_STATUS)
        if not self.read_buffer:
            self.read_buffer = bytearray(READ_SIZE)
        stream = self.new_stream(msg)
        s.requests[rid] = stream
        self.count += 1
        stream.task = s.agent.tasks.spawn(stream.connect(), name=f"relay {rid}")

    def new_stream(self, msg: RelayOpen) -> RelayStream:
        return RelayStream(self, msg)

    def deny(self, msg: RelayOpen, why: str) -> None:
        """Refuse a relay the key's policy does not allow; audited, nothing is connected."""
        s = self.session
        s.agent.audit.record("denied", peer=s.peer, key_id=s.key_id, request=msg.request_id, what="relay",
                             destination=destination(msg), reason=why)
        s.request_error(msg.request_id, ErrorCode.PERMISSION_DENIED,
                        f"permission denied for key {s.key_id}: relay to {destination(msg)}: {why}", RELAY_STATUS)

    def on_data(self, msg: RelayData) -> None:
        stream = self._stream(msg)
        if stream is not None:
            stream.from_controller(msg.data)

    def on_close(self, msg: RelayClose) -> None:
        stream = self._stream(msg)
        if stream is not None:
            stream.close_from_controller(msg)

    def _stream(self, msg: Message) -> RelayStream | None:
        """The stream a frame is for; None (dropped) when it already ended, since
        the controller may send before it sees our RELAY_CLOSE."""
        req = self.session.requests.get(msg.request_id)
        if req is None:
            return None
        if not isinstance(req, RelayStream):
            self.session.request_broke(RemoteProtocolError(
                f"{msg.TYPE.name} under request {msg.request_id}, which is not a relay", ErrorCode.OUT_OF_ORDER))
            return None
        return req


class RelayStream(asyncio.BufferedProtocol):
    """One relayed stream: the protocol of our connection to its destination, and
    the request its RELAY_* frames are routed to."""

    def __init__(self, relays: Relays, msg: RelayOpen) -> None:
        self.relays = relays
        self.session = relays.session
        self.request_id = msg.request_id
        self.open_msg = msg
        self.destination = destination(msg)
        self.channel = RequestChannel(Role.AGENT, msg.request_id, RequestKind.RELAY)
        self.channel.receive(msg)
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.started = time.monotonic()
        self.bytes_in = 0  # controller → destination
        self.bytes_out = 0  # destination → controller
        self._window = self.session.limits.relay_window
        self._held = 0  # bytes in the destination socket's write buffer
        self._to_grant = 0  # bytes the destination took that the controller was not yet granted
        self._backlog = b""  # read beyond the controller's credit (at most one byte), sent on its next grant
        self._dest_eof = False  # the destination ended its side: never read again; close once sent on
        self._reading = False
        self._open = False  # RELAY_OPENED sent
        self._ended = False

    # -- connecting ------------------------------------------------------------

    async def connect(self) -> None:
        msg = self.open_msg
        timeout = msg.timeout or DEFAULT_CONNECT_TIMEOUT
        try:
            async with asyncio.timeout(timeout):
                refusal = await self._dial(msg)
        except TimeoutError:
            return self._failed(f"connect timed out after {timeout:g}s")
        except OSError as exc:
            return self._failed(connect_reason(exc))
        except ValueError as exc:  # a name the resolver cannot even encode
            return self._failed(f"cannot resolve host: {exc}")
        except asyncio.CancelledError:
            self._abort_transport()
            raise
        except Exception:
            log.exception("relay %d to %s: internal error", self.request_id, self.destination)
            return self._failed("internal error in the gateway")
        if self.channel.done:  # the controller closed it meanwhile
            return self._end("closed by the controller")
        if refusal is not None:
            return self._refused(refusal)
        self._opened()

    async def _dial(self, msg: RelayOpen) -> str | None:
        """Connect to the first allowed address; the policy's refusal, or None once connected."""
        loop = asyncio.get_running_loop()
        policy = self.session.policy
        if msg.path is not None:
            if policy is not None and not policy.allows_relay(None, 0, msg.path):
                return "destination not allowed"
            await loop.create_unix_connection(lambda: self, msg.path)
            return None
        assert msg.host is not None
        addresses = [msg.host] if _is_address(msg.host) else list(dict.fromkeys(
            str(info[4][0]) for info in await loop.getaddrinfo(msg.host, msg.port, type=socket.SOCK_STREAM)))
        allowed = [a for a in addresses if policy is None or policy.allows_relay(a, msg.port, None)]
        if not allowed:
            shown = "" if addresses == [msg.host] else f" ({', '.join(addresses)})"
            return f"destination{shown} not allowed"
        failure: OSError | None = None
        for address in allowed:
            try:
                await loop.create_connection(lambda: self, address, msg.port)
                return None
            except OSError as exc:
                failure = exc
        assert failure is not None
        raise failure

    def _opened(self) -> None:
        if self.transport is None:  # reset by the destination before we could say so
            return self._failed("connection closed by the destination")
        opened = RelayOpened(self.request_id, window=self._window, address=self.address)
        self.channel.send(opened)
        self.session.send(opened)
        self._open = True
        s = self.session
        s.agent.audit.record("relay", peer=s.peer, key_id=s.key_id, request=self.request_id,
                             destination=self.destination, address=self.address)
        self._resume()

    def _refused(self, why: str) -> None:
        self._abort_transport()
        self.channel.connection_lost()
        self._forget()
        self.relays.deny(self.open_msg, why)

    def _failed(self, reason: str) -> None:
        self._abort_transport()
        if self.channel.done:
            return self._forget()
        s = self.session
        s.agent.audit.record("relay_failed", peer=s.peer, key_id=s.key_id, request=self.request_id,
                             destination=self.destination, error=reason)
        self._send_end(Error(self.request_id, code=ErrorCode.RELAY_FAILED, message=reason, status=RELAY_STATUS))

    # -- the destination's side (asyncio protocol) -------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # nothing may go to the controller before RELAY_OPENED
        tune_socket(transport, self.session.limits.keepalive)
        # Told when bytes wait in the buffer and again when it is empty: what the
        # destination took is what the controller gets back as window.
        transport.set_write_buffer_limits(high=0)
        peer = transport.get_extra_info("peername")
        self.address = self.destination if not isinstance(peer, tuple) else (
            f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}")

    def get_buffer(self, sizehint: int) -> memoryview:
        size = min(max(self.channel.send_credit, 1), READ_SIZE)
        return memoryview(self.relays.read_buffer)[:size]

    def buffer_updated(self, nbytes: int) -> None:
        data = bytes(memoryview(self.relays.read_buffer)[:nbytes])
        self._to_controller(self._backlog + data if self._backlog else data)

    def eof_received(self) -> bool:
        self._dest_eof = True
        self._flush_backlog()  # and close, once what it sent is on its way to the controller
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.channel.state is RequestState.RUNNING:
            reason = "" if exc is None else connect_reason(exc) if isinstance(exc, OSError) else str(exc)
            self._send_end(RelayClose(self.request_id, reason=reason))

    def pause_writing(self) -> None:
        pass  # bytes wait in the destination's buffer: not granted back until resume_writing

    def resume_writing(self) -> None:
        self._grant(self._held)
        self._held = 0

    # -- towards the controller ----------------------------------------------------

    def _to_controller(self, data: bytes) -> None:
        credit = self.channel.send_credit
        if self.channel.state is not RequestState.RUNNING:
            return
        send, self._backlog = (data, b"") if len(data) <= credit else (data[:credit], data[credit:])
        if send:
            self.channel.send_data(MessageType.RELAY_DATA, len(send))
            self.session.send_data(MessageType.RELAY_DATA, self.request_id, send)
            self.bytes_out += len(send)
        if self.channel.send_credit <= 0 or self.session.writing_paused:
            self._pause()

    def _flush_backlog(self) -> None:
        if self._backlog:
            self._to_controller(b"")
        if self._dest_eof and not self._backlog and self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # the destination is done: RELAY_CLOSE follows, after its last bytes

    def grant(self, nbytes: int) -> None:
        """WINDOW from the controller (or 0: our socket to it drained): read again."""
        if nbytes:
            try:
                self.channel.receive_data(MessageType.WINDOW, nbytes)
            except RemoteProtocolError as exc:
                return self.session.request_broke(exc)
        self._flush_backlog()
        self._resume()

    def _pause(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def _resume(self) -> None:
        ready = self.channel.send_credit > 0 and not self.session.writing_paused and not self._dest_eof
        if ready and not self._reading and self.transport is not None and self.channel.state is RequestState.RUNNING:
            self._reading = True
            self.transport.resume_reading()

    # -- from the controller ---------------------------------------------------------

    def from_controller(self, data: bytes) -> None:
        try:
            self.channel.receive_data(MessageType.RELAY_DATA, len(data))
        except RemoteProtocolError as exc:
            return self.session.request_broke(exc)
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the destination is gone; our RELAY_CLOSE is on its way
        self.bytes_in += len(data)
        transport.write(data)
        buffered = transport.get_write_buffer_size()
        self._grant(self._held + len(data) - buffered)
        self._held = buffered

    def _grant(self, nbytes: int) -> None:
        """The destination took `nbytes`: give them back, a quarter window at a time."""
        self._to_grant += nbytes
        if self._to_grant >= self._window // 4 and self.channel.can_send(MessageType.WINDOW):
            grant, self._to_grant = self._to_grant, 0
            self.channel.send_data(MessageType.WINDOW, grant)
            self.session.send(Window(self.request_id, bytes=grant))

    def close_from_controller(self, msg: RelayClose) -> None:
        if self._step(msg):
            self._end("closed by the controller")

    def _step(self, msg: Message) -> bool:
        return self.session.step(self.channel, msg)

    # -- ending ------------------------------------------------------------------------

    def _send_end(self, msg: RelayClose | Error) -> None:
        """Tell the controller the stream is over (its last frame) and forget it."""
        if not self.channel.done and self.channel.can_send(msg.TYPE):
            self.channel.send(msg)
            self.session.send(msg)
        self._end(msg.reason if isinstance(msg, RelayClose) else msg.message)

    def _end(self, reason: str) -> None:
        self.channel.connection_lost()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()  # a destination that stopped reading must not hold us
        elif transport is not None:
            transport.close()
        was_open = self._open and not self._ended
        self._forget()
        if was_open:
            s = self.session
            s.agent.audit.record("relay_end", peer=s.peer, key_id=s.key_id, request=self.request_id,
                                 destination=self.destination, bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                                 duration=round(time.monotonic() - self.started, 6), reason=reason or None)

    def abort(self) -> None:
        """The controller's connection is gone: drop the destination's at once."""
        self._abort_transport()
        self._end("controller gone")

    def _abort_transport(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _forget(self) -> None:
        if not self._ended:
            self._ended = True
            self.relays.count -= 1
            if self.session.requests.get(self.request_id) is self:
                del self.session.requests[self.request_id]


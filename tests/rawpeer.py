"""A controller on a plain blocking socket, for attacking an agent frame by frame.

It speaks the real protocol through `shoal.protocol.connection.Connection`, but lets a
test see and keep every frame it sends, send any bytes it likes instead (replayed,
reordered, reflected, flipped, cut short), and watch the agent hang up. Agents run
on another thread's loop (tests.agents.AgentThread), so blocking here is fine.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import struct
from pathlib import Path
from typing import Any

from shoal.protocol.connection import Connection, HandshakeComplete, Role
from shoal.protocol.errors import AuthError, ProtocolError
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.handshake import SharedKey
from shoal.protocol.codec import decode_body
from shoal.protocol.messages import Error, Exec, Exit, Message
from tests.waiting import wait_for

# Generous: the agents share a loaded 2-core box with other test runs.
DEADLINE = 15.0


def split_frames(data: bytes) -> list[bytes]:
    """Cut a byte stream into whole frames by their length fields."""
    frames, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from(">I", data, at) if len(data) - at >= 4 else (len(data),)
        frames.append(data[at:at + 4 + length])  # a cut-short last frame is kept as it is
        at += 4 + length
    return frames


def connect(address: str) -> socket.socket:
    """`host:port` over TCP, or an absolute path: that Unix socket (a hub's local socket)."""
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(DEADLINE)
        sock.connect(address)
        return sock
    host, _, port = address.rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=DEADLINE)


class RawController:
    """One connection to an agent; `sent`/`received` keep every frame, in order."""

    # Every instance, so a fixture can close the sockets a failed test left open.
    instances: list[RawController] = []

    def __init__(self, address: str, key: SharedKey | None = None) -> None:
        self.sock = connect(address)
        RawController.instances.append(self)
        self.peer = "unix" if address.startswith("/") else "%s:%d" % self.sock.getsockname()[:2]
        self.conn = Connection(Role.CONTROLLER, key=key)
        self.sent: list[bytes] = []
        self.received = b""
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    @classmethod
    def close_all(cls) -> None:
        while cls.instances:
            cls.instances.pop().close()

    # -- sending -------------------------------------------------------------

    def take(self) -> bytes:
        """The bytes the connection queued, as they would go on the wire (not sent)."""
        return b"".join(self.conn.data_to_send())

    def send_raw(self, data: bytes) -> None:
        if data:
            self.sent.extend(split_frames(data))
            self.sock.sendall(data)

    def flush(self) -> None:
        self.send_raw(self.take())

    def queue(self, msg: Message) -> bytes:
        """Seal `msg` (its sequence number is used up) and return its frame unsent."""
        self.conn.send(msg)
        return self.take()

    # -- receiving -----------------------------------------------------------

    def _recv(self) -> bool:
        """Read once into the connection; False at end of stream."""
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        self.received += data
        self.conn.receive_data(data)
        if not data:
            self.eof = True
        return bool(data)

    def next_event(self) -> Message | HandshakeComplete | None:
        """The next event from the agent; None once it closed the connection."""
        while True:
            event = self.conn.next_event()
            self.flush()  # the handshake answers by itself (our AUTH)
            if event is not None:
                return event
            if self.eof or not self._recv():
                return self.conn.next_event()

    def handshake(self) -> HandshakeComplete:
        self.conn.start()
        self.flush()
        event = self.next_event()
        assert isinstance(event, HandshakeComplete), event
        return event

    def run(self, msg: Exec) -> tuple[Exit, list[Message]]:
        """Send an EXEC and collect this request's frames up to its EXIT."""
        self.conn.send(msg)
        self.flush()
        seen: list[Message] = []
        while True:
            event = self.next_event()
            assert event is not None, f"agent closed the connection; got {seen}"
            if isinstance(event, Message) and event.request_id == msg.request_id:
                if isinstance(event, Exit):
                    return event, seen
                assert not isinstance(event, Error), event
                seen.append(event)

    def rejected(self) -> Error:
        """Wait for the agent to send its closing ERROR and hang up; return the ERROR."""
        errors: list[Error] = []
        try:
            while (event := self.next_event()) is not None:
                if isinstance(event, Error):
                    errors.append(event)
        except (AuthError, ProtocolError) as exc:  # an ERROR during the handshake is raised
            assert self.wait_closed(), "agent kept the connection open"
            code = exc.code if isinstance(exc, ProtocolError) else "auth_failed"
            return Error(0, code=code, message=str(exc))
        assert errors, "agent closed without an ERROR frame"
        return errors[-1]

    def wait_closed(self, deadline: float = DEADLINE) -> bool:
        """Read until the agent closes the socket; False if it is still open at the deadline."""
        def closed() -> bool:
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                self._recv_raw()
            return self.eof

        with contextlib.suppress(AssertionError):
            wait_for(closed, timeout=deadline, interval=0, what="the agent to close the connection")
        return self.eof

    def _recv_raw(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        self.received += data
        self.eof = not data


def untagged_frames(data: bytes) -> list[tuple[int, Message]]:
    """Decode frames sent before any session key existed (handshake replies)."""
    decoder = FrameDecoder()
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append((frame.type, decode_body(frame.type, frame.request_id, frame.body)))
    return out


def audit_events(path: Path, **match: Any) -> list[dict[str, Any]]:
    """The audit log's events whose fields equal `match`."""
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if all(e.get(k) == v for k, v in match.items())]

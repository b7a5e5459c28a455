"""Hostile and broken peers on raw sockets: each harms only its own connection or request.

The agent runs on a background thread; the test speaks to it through plain
blocking sockets, using the sans-I/O `Connection` for a real handshake and
hand-packed frames for everything a real controller would never send. After
every case a normal controller runs a normal command on the same agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Callable, Iterator

import pytest

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command
from shoal.controller.targets import Target
from shoal.protocol.connection import Connection, HandshakeComplete, Role
from shoal.protocol.frames import HEAD, FrameDecoder
from shoal.protocol.codec import decode_body
from shoal.protocol.messages import Error, Exec, Exit, Message, MessageType, Signal, Started, Stdin, Window
from tests.agents import AgentThread
from tests.waiting import wait_for

GIB = 1024 ** 3
HANDSHAKE_TIMEOUT = 1.0


@pytest.fixture
def agent(start_agents: Callable[..., AgentThread]) -> AgentThread:
    return start_agents(**{"limits.handshake_timeout": HANDSHAKE_TIMEOUT})


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="shoal")
    return caplog


def _frame(type_: int, request_id: int, body: bytes) -> bytes:
    return HEAD.pack(5 + len(body), type_, request_id) + body


class RawPeer:
    """A controller on a blocking socket that can also send anything at all."""

    def __init__(self, t: AgentThread) -> None:
        host, _, port = t.addresses[0].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.port = self.sock.getsockname()[1]
        self.conn = Connection(Role.CONTROLLER)

    def handshake(self) -> RawPeer:
        self.conn.start()
        self._flush()
        while not isinstance(self.next_event(), HandshakeComplete):
            pass
        return self

    def _flush(self) -> None:
        for chunk in self.conn.data_to_send():
            self.sock.sendall(chunk)

    def send(self, msg: Message) -> None:
        self.conn.send(msg)
        self._flush()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_event(self) -> Message | HandshakeComplete:
        while True:
            event = self.conn.next_event()
            if event is not None:
                return event
            data = self.sock.recv(65536)
            assert data, "agent closed the connection"
            self.conn.receive_data(data)

    def next_for(self, request_id: int) -> Message:
        while True:
            event = self.next_event()
            if isinstance(event, Message) and event.request_id == request_id:
                return event

    def read_until_closed(self, timeout: float = 5) -> list[Message]:
        """Everything the agent sends until it closes; fails if it does not within `timeout`."""
        self.sock.settimeout(timeout)
        data = bytearray()
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        decoder = FrameDecoder(max_body=64 * 1024 * 1024)
        decoder.feed(bytes(data))
        out = []
        while (frame := decoder.next_frame()) is not None:
            out.append(decode_body(frame.type, frame.request_id, frame.body))
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers(agent: AgentThread) -> Iterator[list[RawPeer]]:
    opened: list[RawPeer] = []
    yield opened
    for p in opened:
        p.close()


def _open(agent: AgentThread, peers: list[RawPeer]) -> RawPeer:
    peer = RawPeer(agent)
    peers.append(peer)
    return peer


def _errors(messages: list[Message]) -> list[str]:
    return [m.code for m in messages if isinstance(m, Error)]


def _serves_normally(agent: AgentThread) -> None:
    """A fresh controller runs a command to completion."""
    async def run() -> tuple[bytes, int]:
        host, _, port = agent.addresses[0].rpartition(":")
        client = await AgentClient.connect(Target(name="ok", host=host, port=int(port)), timeout=5)
        try:
            proc = await client.exec(Command(argv=["echo", "still serving"]))
            out = b"".join([e.data async for e in proc])
            return out, (await proc.wait()).status
        finally:
            await client.close()

    assert asyncio.run(run()) == (b"still serving\n", 0)


def _logged_for(caplog: pytest.LogCaptureFixture, peer: RawPeer, level: int = logging.INFO) -> list[str]:
    tag = f"peer=127.0.0.1:{peer.port}"
    return [r.getMessage() for r in caplog.records if r.levelno >= level and tag in r.getMessage()]


def _wait_logged(caplog: pytest.LogCaptureFixture, peer: RawPeer, level: int = logging.INFO) -> list[str]:
    return wait_for(lambda: _logged_for(caplog, peer, level), what=f"a log line about peer port {peer.port}")


# -- connection-level faults: the connection is closed, the agent carries on --


def test_gigabyte_length_header_without_a_body(agent: AgentThread, peers: list[RawPeer],
                                               agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers)
    peer.send_raw(HEAD.pack(GIB, MessageType.HELLO, 0))
    assert _errors(peer.read_until_closed()) == ["frame_too_large"]
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


def test_gigabyte_length_header_after_the_handshake(agent: AgentThread, peers: list[RawPeer],
                                                    agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers).handshake()
    peer.send_raw(HEAD.pack(GIB, MessageType.STDIN, 1))
    assert _errors(peer.read_until_closed()) == ["frame_too_large"]
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


def test_slowloris_handshake_is_dropped_at_the_deadline(agent: AgentThread, peers: list[RawPeer],
                                                        agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers)
    peer.conn.start()
    hello = b"".join(peer.conn.data_to_send())
    peer.sock.settimeout(0.2)
    closed = False
    for byte in hello[:-1]:  # never the whole HELLO
        try:
            peer.sock.sendall(bytes([byte]))
            closed = peer.sock.recv(65536) == b""
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        if closed:
            break
    assert closed, "the agent kept a connection that never finished its handshake"
    lines = _wait_logged(agent_log, peer, logging.WARNING)
    assert len(lines) == 1 and "handshake timeout" in lines[0]
    _serves_normally(agent)


@pytest.mark.parametrize("seed", range(5))
def test_random_garbage_stream(seed: int, agent: AgentThread, peers: list[RawPeer],
                               agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers)
    garbage = _seeded(seed, 64 * 1024)
    try:
        peer.send_raw(garbage)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending: fine
    errors = _errors(peer.read_until_closed())
    assert len(errors) <= 1  # one ERROR at most, then the close
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


def _seeded(seed: int, size: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


def test_unknown_message_type(agent: AgentThread, peers: list[RawPeer], agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers).handshake()
    peer.send_raw(_frame(0x7F, 1, b"{}"))
    assert _errors(peer.read_until_closed()) == ["unknown_type"]
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", json.dumps({"argv": 7}).encode()])
def test_bad_exec_body(body: bytes, agent: AgentThread, peers: list[RawPeer],
                       agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers).handshake()
    peer.send_raw(_frame(MessageType.EXEC, 1, body))
    assert _errors(peer.read_until_closed()) == ["bad_message"]
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


def test_exec_before_the_handshake_is_out_of_order(agent: AgentThread, peers: list[RawPeer],
                                                    agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers)
    peer.send_raw(_frame(MessageType.EXEC, 1, json.dumps({"argv": ["true"]}).encode()))
    assert _errors(peer.read_until_closed()) == ["out_of_order"]
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


def test_second_hello_after_the_handshake_is_out_of_order(agent: AgentThread, peers: list[RawPeer],
                                                          agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers)
    peer.conn.start()
    hello = b"".join(peer.conn.data_to_send())
    peer.send_raw(hello)
    while not isinstance(peer.next_event(), HandshakeComplete):
        pass
    peer.send_raw(hello)
    assert _errors(peer.read_until_closed()) == ["out_of_order"]
    assert len(_wait_logged(agent_log, peer, logging.WARNING)) == 1
    _serves_normally(agent)


# -- request-level faults: that request gets an ERROR, the connection lives on --


def test_duplicate_request_id_errors_only_the_duplicate(agent: AgentThread, peers: list[RawPeer],
                                                        agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers).handshake()
    peer.send(Exec(5, argv=["sleep", "300"]))
    assert isinstance(peer.next_for(5), Started)
    peer.send(Exec(5, argv=["echo", "impostor"]))
    dup = peer.next_for(5)
    assert isinstance(dup, Error) and dup.code == "duplicate_request"
    peer.send(Signal(5, signal=9))  # the original request is still there and still ours
    end = peer.next_for(5)
    assert isinstance(end, Exit) and end.signal == 9
    _same_connection_still_works(peer, 6)


@pytest.mark.parametrize("stray", [Stdin(99, b"data for nobody"), Signal(99, signal=15)])
def test_frames_for_an_unknown_request(stray: Message, agent: AgentThread, peers: list[RawPeer],
                                       agent_log: pytest.LogCaptureFixture) -> None:
    peer = _open(agent, peers).handshake()
    peer.send(stray)
    reply = peer.next_for(99)
    assert isinstance(reply, Error) and reply.code == "unknown_request"
    peer.send(Window(98, bytes=4096))  # a window for nothing is harmless
    _same_connection_still_works(peer, 1)
    assert len([line for line in _logged_for(agent_log, peer) if "unknown request" in line]) == 1
    _serves_normally(agent)


def _same_connection_still_works(peer: RawPeer, request_id: int) -> None:
    peer.send(Exec(request_id, argv=["echo", "fine"]))
    out = b""
    while not isinstance(msg := peer.next_for(request_id), Exit):
        if msg.TYPE is MessageType.STDOUT:
            out += msg.data  # type: ignore[attr-defined]
    assert out == b"fine\n" and msg.status == 0

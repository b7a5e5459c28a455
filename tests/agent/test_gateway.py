"""The gateway's side of a relay, frame by frame, from a controller on a plain socket.

The gateway is a real agent (AgentThread); the destinations are a real agent, or a
TCP server that speaks first, as a service other than shoal would.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from shoal.protocol.errors import ErrorCode
from shoal.protocol.messages import (Error, Exec, Message, Ping, Pong, RelayClose, RelayData, RelayOpen,
                                     RelayOpened, Window)
from tests.agents import AgentThread
from tests.rawpeer import RawController

WINDOW = 4096


@pytest.fixture
def gateway(start_agents: Callable[..., AgentThread]) -> Iterator[AgentThread]:
    yield start_agents(**{"limits.relay_window": WINDOW})
    RawController.close_all()


@pytest.fixture
def banner_server() -> Iterator[int]:
    """A TCP server on loopback that greets each client first, then echoes what it reads
    until it reads `bye`: then it says `later` and hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    clients: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed at teardown
            clients.append(conn)
            try:
                with conn:
                    conn.sendall(b"SSH-2.0-not-shoal\r\n")
                    while (data := conn.recv(65536)) != b"bye":
                        conn.sendall(data)
                    conn.sendall(b"later")
            except OSError:
                pass  # the gateway dropped it

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    for conn in clients:
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    thread.join(5)
    assert not thread.is_alive()


def opened(peer: RawController, port: int, rid: int = 5) -> RelayOpened:
    peer.conn.send(RelayOpen(rid, host="127.0.0.1", port=port, window=WINDOW))
    peer.flush()
    event = next_for(peer, rid)
    assert isinstance(event, RelayOpened), event
    return event


def next_for(peer: RawController, rid: int) -> Message:
    while True:
        event = peer.next_event()
        assert event is not None, "the gateway closed the connection"
        if isinstance(event, Message) and event.request_id == rid:
            return event


def test_bytes_a_destination_sends_first_wait_for_relay_opened_then_flow_until_it_hangs_up(
        gateway: AgentThread, banner_server: int) -> None:
    peer = RawController(gateway.addresses[0])
    peer.handshake()
    reply = opened(peer, banner_server)
    assert reply.window == WINDOW and reply.address == f"127.0.0.1:{banner_server}"
    assert next_for(peer, 5) == RelayData(5, b"SSH-2.0-not-shoal\r\n")
    peer.conn.send(RelayData(5, b"ping"))
    peer.flush()
    assert next_for(peer, 5) == RelayData(5, b"ping")
    peer.conn.send(RelayData(5, b"bye"))
    peer.flush()  # the destination's last words come first, then the end of the stream
    assert [next_for(peer, 5) for _ in range(2)] == [RelayData(5, b"later"), RelayClose(5, reason="")]


def test_a_controller_past_the_window_it_was_granted_is_cut_off(gateway: AgentThread, banner_server: int) -> None:
    peer = RawController(gateway.addresses[0])
    peer.handshake()
    opened(peer, banner_server)
    peer.conn.send(RelayData(5, b"x" * (WINDOW + 1)))
    peer.flush()
    error = peer.rejected()
    assert error.code == ErrorCode.WINDOW_EXCEEDED and "relay data for request 5 overran its window" in error.message


def test_frames_for_a_stream_already_closed_are_dropped_and_the_connection_carries_on(
        gateway: AgentThread, banner_server: int) -> None:
    peer = RawController(gateway.addresses[0])
    peer.handshake()
    opened(peer, banner_server)
    for msg in (RelayClose(5), RelayData(5, b"late"), Window(5, bytes=10), RelayClose(5),
                Ping(0, t0=1.0)):
        peer.conn.send(msg)
    peer.flush()
    while not isinstance(event := peer.next_event(), Pong):
        assert not isinstance(event, Error), event


def test_relay_frames_under_a_command_are_out_of_order(gateway: AgentThread) -> None:
    peer = RawController(gateway.addresses[0])
    peer.handshake()
    peer.conn.send(Exec(3, argv=["sleep", "5"]))
    peer.conn.send(RelayData(3, b"x"))
    peer.flush()
    error = peer.rejected()
    assert error.code == ErrorCode.OUT_OF_ORDER and "not a relay" in error.message


@pytest.mark.parametrize("msg, code", [
    (RelayOpen(7, host="127.0.0.1", port=1), ErrorCode.RELAY_FAILED),
    (RelayOpen(7, path="/nonexistent/shoal.sock"), ErrorCode.RELAY_FAILED),
    (RelayOpen(7, host="a\0b", port=8470), ErrorCode.BAD_REQUEST),
])
def test_a_relay_that_cannot_open_is_one_error_for_it_alone(gateway: AgentThread, msg: RelayOpen, code: str) -> None:
    peer = RawController(gateway.addresses[0])
    peer.handshake()
    peer.conn.send(msg)
    peer.flush()
    error = next_for(peer, 7)
    assert isinstance(error, Error) and (error.code, error.status) == (code, 255), error
    peer.conn.send(Ping(0, t0=2.0))
    peer.flush()
    assert isinstance(peer.next_event(), Pong)

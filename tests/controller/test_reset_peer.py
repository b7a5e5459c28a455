"""A peer that resets the TCP connection (RST, not FIN): the client translates the
socket error once, so a run reports the host as lost or unreachable, never as an
internal error, and the other hosts are untouched."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.outcome import Outcome
from shoal.controller.result import UNREACHABLE, Result
from shoal.controller.targets import Target
from shoal.protocol.connection import Connection, Role
from shoal.protocol.messages import Exec, Started, Stdout

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Keep:
    def __init__(self) -> None:
        self.results: dict[str, Result] = {}
        self.out = bytearray()

    def on_start(self, host: str) -> None:
        pass

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        self.out += data

    def on_result(self, result: Result) -> None:
        self.results[result.host] = result


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the kernel sends RST and the controller's read fails."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _reset_mid_run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Act as a keyless agent until EXEC arrives, start it, print a line, then reset."""
    agent = Connection(Role.AGENT)
    while data := await reader.read(65536):
        agent.receive_data(data)
        while (event := agent.next_event()) is not None:
            if isinstance(event, Exec):
                agent.send(Started(event.request_id, pid=4242))
                agent.send(Stdout(event.request_id, b"partial\n"))
                writer.write(b"".join(agent.data_to_send()))
                await writer.drain()
                await asyncio.sleep(0.2)  # let the output land before the reset
                _reset(writer)
                return
        writer.write(b"".join(agent.data_to_send()))


async def _reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)  # our HELLO
    _reset(writer)


@asynccontextmanager
async def peer(behaviour: Peer) -> AsyncIterator[Target]:
    server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Target(name=f"127.0.0.1:{port}", host="127.0.0.1", port=port)
    finally:
        server.close()
        await server.wait_closed()


async def test_reset_mid_run_is_connection_lost_not_internal() -> None:
    async with peer(_reset_mid_run) as target:
        keep = Keep()
        run = await Fleet([target], ConnectOptions(timeout=5)).run(Command(shell="sleep 9"), keep)
    result = run.results[0]
    assert keep.out == b"partial\n"
    assert result.status == UNREACHABLE and result.unreachable, result
    assert result.error_code == Outcome.CONNECTION_LOST, result
    assert result.error is not None and result.error.startswith("connection lost"), result
    assert "internal" not in result.error


async def test_reset_before_hello_is_unreachable_not_internal() -> None:
    async with peer(_reset_at_once) as target:
        run = await Fleet([target], ConnectOptions(timeout=5)).run(Command(shell="true"), Keep())
    result = run.results[0]
    assert result.status == UNREACHABLE and result.error_code == Outcome.UNREACHABLE, result
    assert result.error is not None and "internal" not in result.error, result

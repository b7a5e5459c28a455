"""Peers that accept TCP on 127.0.0.1 and then are not shoal agents.

Each behaviour is a small asyncio server on an ephemeral port, all served from one
background thread's loop (like tests.agents.AgentThread), so a `shoal` run in a
subprocess or in-process can meet them next to real agents:

    silent          accepts and never speaks
    ssh             sends an SSH banner at once
    http            reads our HELLO, answers with an HTTP error page
    close           closes right after accept
    halfclose       shuts down its sending side right after accept, stays open
    truncated       answers our HELLO with the first half of a real agent HELLO, then waits
    truncated_close the same, then closes
    lying_agent     completes the handshake calling itself EVIL_SOFTWARE, then answers
                    anything with a connection ERROR whose text is EVIL_ERROR
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

from shoal.protocol.connection import Connection, Role
from shoal.protocol.messages import Error, Message

__all__ = ["HostilePeers", "BEHAVIOURS"]

SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Debian-4\r\n"
HTTP_REPLY = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
# Terminal controls where a real agent puts plain text: set the clipboard, clear the
# screen, return the cursor over the host prefix.
EVIL_SOFTWARE = "shoal-agent/\x1b]52;c;Zm9yZ2Vk\x07"
EVIL_ERROR = "no\x1b[2J\rweb99: ok"

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _hold(reader: asyncio.StreamReader) -> None:
    """Keep the connection open until the controller hangs up."""
    while await reader.read(65536):
        pass


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _hold(reader)


async def _ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(SSH_BANNER)
    await _hold(reader)


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(HTTP_REPLY)
    await _hold(reader)


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    pass


async def _halfclose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write_eof()
    await _hold(reader)


async def _half_hello(reader: asyncio.StreamReader) -> bytes:
    """Half of the HELLO a keyless agent would answer our HELLO with."""
    agent = Connection(Role.AGENT)
    while not (hello := b"".join(agent.data_to_send())):
        data = await reader.read(65536)
        if not data:
            return b""
        agent.receive_data(data)
        agent.next_event()
    return hello[:len(hello) // 2]


async def _truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await _half_hello(reader))
    await _hold(reader)


async def _truncated_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await _half_hello(reader))
    await writer.drain()


async def _lying_agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    agent = Connection(Role.AGENT, software=EVIL_SOFTWARE)
    while data := await reader.read(65536):
        agent.receive_data(data)
        while (event := agent.next_event()) is not None:
            if isinstance(event, Message):
                agent.send(Error(0, code="refused", message=EVIL_ERROR))
        writer.write(b"".join(agent.data_to_send()))


BEHAVIOURS: dict[str, Behaviour] = {
    "silent": _silent, "ssh": _ssh, "http": _http, "close": _close, "halfclose": _halfclose,
    "truncated": _truncated, "truncated_close": _truncated_close, "lying_agent": _lying_agent,
}


class HostilePeers:
    """Every behaviour listening on its own port; `address[name]` is its `127.0.0.1:PORT`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.address: dict[str, str] = {}
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> HostilePeers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    async def _start(self) -> None:
        for name, behaviour in BEHAVIOURS.items():
            server = await asyncio.start_server(_closing(behaviour), "127.0.0.1", 0)
            self._servers.append(server)
            self.address[name] = "127.0.0.1:%d" % server.sockets[0].getsockname()[:2][1]

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        for server in self._servers:
            await server.wait_closed()


def _closing(behaviour: Behaviour) -> Behaviour:
    """Run a behaviour, then close its socket whatever happened."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await behaviour(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
    return handle

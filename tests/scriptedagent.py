"""An agent that answers by script: the real handshake, then whatever frames a test picks.

For the controller's side of the request tables: a test gives `ScriptedAgent` a
function from each message the controller sends to the frames to answer it with,
legal or not, and reads back what the controller sent (`received`: its requests,
its data, and the ERROR it closes with). It listens on 127.0.0.1 in the test's
own loop, so the controller library meets it as it would meet any agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from shoal.controller.targets import Target
from shoal.protocol.connection import Connection, Role
from shoal.protocol.messages import Error, Message

__all__ = ["ScriptedAgent", "Script"]

# What to answer a message from the controller with (often nothing).
Script = Callable[[Message], list[Message]]


class ScriptedAgent:
    """A keyless agent on an ephemeral loopback port; `target` names it."""

    def __init__(self, script: Script, features: tuple[str, ...] = ()) -> None:
        self.script = script
        self.features = features
        self.received: list[Message] = []
        self.hung_up = asyncio.Event()  # the controller closed its connection
        self._server: asyncio.Server | None = None
        self._port = 0

    @property
    def target(self) -> Target:
        """Where it listens, once entered."""
        assert self._port, "enter the ScriptedAgent first"
        return Target(name="scripted", host="127.0.0.1", port=self._port)

    async def __aenter__(self) -> ScriptedAgent:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def errors(self) -> list[str]:
        """The codes of the ERRORs the controller sent."""
        return [m.code for m in self.received if isinstance(m, Error)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.AGENT, software="scripted", features=list(self.features))
        try:
            while data := await reader.read(1 << 20):
                conn.receive_data(data)
                while (event := conn.next_event()) is not None:
                    if isinstance(event, Message):
                        self.received.append(event)
                        for answer in self.script(event):
                            conn.send(answer)
                writer.write(b"".join(conn.data_to_send()))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.hung_up.set()
            writer.close()

"""What put and get share: the transfer status, progress, and the base of every file request.

`TransferRequest` is one request on one `AgentClient` (frames in, failure,
waiting); the put and get sides (`shoal.controller.put`, `shoal.controller.get`),
batches (`shoal.controller.putbatch`) and tree requests (`shoal.controller.tree`)
build on it. Statuses: 0 copied, `TRANSFER_FAILED` (1) refused or failed on that
host (no such file, permission denied, disk full...), 255 unreachable or
connection lost.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol, TypeVar

from shoal.protocol.connection import Role
from shoal.protocol.errors import RemoteCommandError, ShoalConnectionError, ShoalError
from shoal.protocol.messages import Error, Message
from shoal.protocol.request import RequestChannel, RequestKind

from shoal.controller.client import AgentClient
from shoal.controller.fleet import ConnectOptions
from shoal.controller.result import Result, failure_result
from shoal.controller.targets import Target

__all__ = ["TRANSFER_FAILED", "Progress", "NoProgress", "TransferRequest", "in_thread", "connect_or_result"]

# Exit status of a host whose transfer was refused or failed (not unreachable).
TRANSFER_FAILED = 1

T = TypeVar("T")


class Progress(Protocol):
    """Receives byte counts as a transfer goes (see TransferProgress)."""

    def expect(self, n: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def dropped(self, n: int) -> None: ...


class NoProgress:
    def expect(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def dropped(self, n: int) -> None:
        pass


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking local file I/O off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# -- one request on one connection ---------------------------------------------


class TransferRequest:
    """Routing and failure shared by both directions, and by batches and tree requests.

    `AgentClient` hands us this request's frames (`receive`) and tells us when the
    connection is gone (`lost`); a waiter sees either as an exception. A request of
    a `kind` steps its channel (shoal.protocol.request) with every frame, ours
    (`_send`) and the agent's, so the table the agent follows judges the agent
    too, and the channel keeps the windows.
    """

    def __init__(self, client: AgentClient, kind: RequestKind) -> None:
        self.client = client
        self.host = client.name
        self.request_id = client.new_request_id()
        self.error: ShoalError | None = None
        self.channel = RequestChannel(Role.CONTROLLER, self.request_id, kind)
        self._changed = asyncio.Event()
        if client.closed:
            self.error = ShoalConnectionError(self.host, client.close_reason or "connection closed")
        else:
            client.requests[self.request_id] = self

    def _send(self, msg: Message) -> None:
        self.channel.send(msg)
        self.client.send(msg)

    def receive(self, msg: Message) -> None:
        if not self.client.step(self.channel, msg):
            return
        if isinstance(msg, Error):
            status = msg.status if msg.status is not None else TRANSFER_FAILED
            self._fail(RemoteCommandError(msg.message, code=msg.code, host=self.host,
                                          request_id=self.request_id, status=status))
        else:
            self._on_message(msg)
        self._changed.set()

    def _on_message(self, msg: Message) -> None:
        raise NotImplementedError

    def _check_features(self, needed: list[str]) -> None:
        """Fail at once, sending nothing, when the agent would ignore a field it must honour."""
        if self.error is None:
            try:
                self.client.check_features(needed)
            except RemoteCommandError as exc:
                exc.status = TRANSFER_FAILED
                self._fail(exc)

    def lost(self, reason: str) -> None:
        self._fail(ShoalConnectionError(self.host, reason))
        self._changed.set()

    def give_up(self, exc: ShoalError) -> None:
        """A local failure ends this request: waiters see `exc`, frames stop coming to us."""
        self._fail(exc)
        self._changed.set()

    def _fail(self, exc: ShoalError) -> None:
        if self.error is None:
            self.error = exc
        self._end()

    def _end(self) -> None:
        if self.error is not None:
            self.channel.connection_lost()  # failed or abandoned: nothing more goes out under its id
        self.client.requests.pop(self.request_id, None)

    async def _until(self, ready: Callable[[], bool]) -> None:
        """Wait for `ready()`; raise the request's error if it fails first (or failed)."""
        while self.error is None and not ready():
            self._changed.clear()
            await self._changed.wait()
        if self.error is not None:
            raise self.error


async def connect_or_result(connect: ConnectOptions, target: Target) -> AgentClient | Result:
    """Connect to `target`; a failure becomes its Result, so a group goes on without it."""
    try:
        return await connect.connect(target)
    except ShoalError as exc:
        return failure_result(target.name, exc)

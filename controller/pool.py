"""Persistent connections to a set of hosts: run line after line, survive drops.

`shoal run` connects, runs one command and disconnects. An interactive session
instead keeps one AgentClient per host for its whole life, so each typed line
costs one round trip rather than a handshake per host. A host whose connection
drops is reported once, marked reconnecting and retried in the background with
exponential backoff, while lines keep running on the hosts still connected.
Authentication failures are not retried: the same key would fail again.

All methods run on the session's event loop; `repl.py` drives it from another
thread.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shoal.hostio.tasks import TaskSet
from shoal.protocol.errors import AuthError, ShoalError
from shoal.protocol.messages import Message

from shoal.controller.client import AgentClient

from shoal.controller.remote import Command, Running
from shoal.controller.fanout import fan_out
from shoal.controller.fleet import ConnectOptions, Handler
from shoal.controller.outcome import Outcome
from shoal.controller.result import CANCELLED_STATUS, UNREACHABLE, Result, failure_result
from shoal.controller.targets import Target

__all__ = ["LinkState", "HostLink", "Session", "RETRY_FIRST", "RETRY_MAX"]

# First retry soon, since a restarting agent is back well within a second; then
# double up to a minute so a host that is really gone costs almost nothing.
RETRY_FIRST = 0.25
RETRY_MAX = 60.0


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


@dataclass(slots=True)
class HostLink:
    """One host of the session: its connection (when up) and why it is not."""

    target: Target
    state: LinkState = LinkState.CONNECTING
    client: AgentClient | None = None
    error: str | None = None
    next_try: float | None = None  # loop time of the next reconnect attempt

    @property
    def name(self) -> str:
        return self.target.name


class _DropWatch:
    """Sits in a client's request table so the session hears when the connection is lost.

    AgentClient tells every registered request `lost(reason)` when its connection
    ends; this one never receives frames, it only forwards the loss.
    """

    def __init__(self, session: Session, link: HostLink, client: AgentClient) -> None:
        self._session = session
        self._link = link
        self._client = client

    def receive(self, msg: Message) -> None:
        """No frames are addressed to this request id."""

    def lost(self, reason: str, code: str = Outcome.CONNECTION_LOST) -> None:
        self._session._dropped(self._link, self._client, reason)


class Session:
    """Hosts kept connected for running many commands.

    Args:
        targets: every host the session starts with, in display order.
        options: keys, TLS and timeouts for connecting.
        notify: receives one line of text per event worth telling the user
            (a drop, a reconnect, giving up); called on the loop's thread.
        fanout: hosts connecting or running at once.
        retry_first, retry_max: reconnect backoff bounds in seconds.
    """

    def __init__(self, targets: list[Target], options: ConnectOptions, notify: Callable[[str], None],
                 fanout: int = 64, retry_first: float = RETRY_FIRST, retry_max: float = RETRY_MAX) -> None:
        self.links: dict[str, HostLink] = {t.name: HostLink(t) for t in targets}
        self.options = options
        self.notify = notify
        self.retry_first = retry_first
        self.retry_max = retry_max
        self._fanout = max(1, fanout)
        self._gate: asyncio.Semaphore | None = None
        self._tasks = TaskSet()
        self._running = Running()
        self._closing = False

    # -- hosts ---------------------------------------------------------------

    def add(self, targets: Iterable[Target]) -> list[str]:
        """Know these hosts too (already known ones keep their link); return their names."""
        names = []
        for target in targets:
            self.links.setdefault(target.name, HostLink(target))
            names.append(target.name)
        return names

    async def connect(self, names: Iterable[str]) -> None:
        """Connect the hosts not yet tried; failures are reported and retried in the background."""
        fresh = [self.links[n] for n in names if self.links[n].state is LinkState.CONNECTING]
        await fan_out(fresh, self._first_connect)  # _open() keeps within the fan-out

    async def _first_connect(self, link: HostLink) -> None:
        try:
            await self._open(link)
        except ShoalError as exc:
            self._connect_failed(link, exc, first=True)

    def _gate_(self) -> asyncio.Semaphore:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self._fanout)
        return self._gate

    async def _open(self, link: HostLink) -> None:
        async with self._gate_():
            client = await self.options.connect(link.target)
        if self._closing:
            await client.close()
            return
        link.client, link.state, link.error, link.next_try = client, LinkState.CONNECTED, None, None
        client.requests[client.new_request_id()] = _DropWatch(self, link, client)

    def _connect_failed(self, link: HostLink, exc: ShoalError, first: bool) -> None:
        """Record why a connect failed; retry unless the key was refused."""
        link.error = failure_result(link.name, exc).error
        if isinstance(exc, AuthError):
            link.state = LinkState.FAILED
            self.notify(f"{link.name}: {link.error}; not retrying")
        elif first:
            link.state = LinkState.RECONNECTING
            self.notify(f"{link.name}: {link.error}; retrying in the background")
            self._tasks.spawn(self._retry(link), name=f"reconnect-{link.name}")

    def _dropped(self, link: HostLink, client: AgentClient, reason: str) -> None:
        """A live connection ended: report it once and reconnect in the background."""
        if self._closing or link.client is not client:
            return
        link.client, link.state, link.error = None, LinkState.RECONNECTING, reason
        self.notify(f"{link.name}: {reason}; reconnecting in the background")
        self._tasks.spawn(self._retry(link), name=f"reconnect-{link.name}")

    async def _retry(self, link: HostLink) -> None:
        """Reconnect with exponential backoff until it works, auth fails or we close."""
        loop = asyncio.get_running_loop()
        delay = self.retry_first
        while not self._closing and link.state is LinkState.RECONNECTING:
            link.next_try = loop.time() + delay
            await asyncio.sleep(delay)
            try:
                await self._open(link)
            except ShoalError as exc:
                self._connect_failed(link, exc, first=False)
                delay = min(delay * 2, self.retry_max)
                continue
            if link.client is not None:
                self.notify(f"{link.name}: reconnected")
            return

    # -- commands ------------------------------------------------------------

    def connected(self, names: list[str]) -> list[str]:
        """The names among `names` whose connection is up now."""
        return [n for n in names if self.links[n].state is LinkState.CONNECTED]

    async def run(self, command: Command, handler: Handler, names: list[str]) -> list[Result]:
        """Run `command` on the connected hosts among `names`.

        Hosts not connected get an unreachable result without being tried; a
        host lost mid-command gets status 255. Never raises for one host's sake.
        Each host sees its place among `names` in SHOAL_NODENUM (`Command.for_node`).
        """
        self._running.reset()
        up = self.connected(names)
        down = [Result(n, UNREACHABLE, error=f"not connected ({self.links[n].state.value})",
                       error_code=Outcome.UNREACHABLE) for n in names if n not in up]
        nodes = {n: command.for_node(n, i, len(names)) for i, n in enumerate(names)}
        ran = await fan_out(up, lambda n: self._exec(self.links[n], nodes[n], handler), limit=self._gate_(),
                            on_done=handler.on_result)
        return ran + down

    async def _exec(self, link: HostLink, command: Command, handler: Handler) -> Result:
        client = link.client
        if self._running.stopping:
            return Result(link.name, CANCELLED_STATUS, cancelled=True, error="cancelled before it started",
                          error_code=Outcome.CANCELLED)
        if client is None:
            return Result(link.name, UNREACHABLE, error="connection lost", error_code=Outcome.CONNECTION_LOST)
        handler.on_start(link.name)
        try:
            proc = await client.exec(command)
        except ShoalError as exc:
            return failure_result(link.name, exc)
        self._running.add(link.name, proc)
        try:
            async for event in proc:
                handler.on_output(link.name, event.stream, event.data)
            return await proc.wait()
        finally:
            self._running.remove(link.name)

    def cancel(self, grace: float | None = None) -> None:
        """Cancel the running command everywhere (SIGINT, SIGTERM, SIGKILL) and start no more."""
        self._running.cancel(grace)

    def kill(self) -> None:
        """SIGKILL the running command's process trees now."""
        self._running.kill()

    # -- closing -------------------------------------------------------------

    async def close(self) -> None:
        """Stop reconnecting and say goodbye on every open connection."""
        self._closing = True
        self._tasks.cancel_all()
        clients = [link.client for link in self.links.values() if link.client is not None]
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await self._tasks.wait()
        await self.options.close()  # the gateways relayed hosts went through, and the hub

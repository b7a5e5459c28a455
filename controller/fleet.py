"""Run one command on many hosts: bounded fan-out, per-host results, event handler.

Each host is its own task; its failure (unreachable, refused, lost) becomes its
Result with status 255 and never cancels the others. At most `fanout` hosts are
connecting or running at once, like clush's fanout or pssh's -p.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from shoal.protocol.errors import AuthError, RemoteCommandError, ShoalConnectionError, ShoalError, ShoalTimeoutError
from shoal.protocol.handshake import SharedKey

from shoal.controller.client import AgentClient, Command, RemoteProcess
from shoal.controller.result import UNREACHABLE, Result, fleet_status
from shoal.controller.stdin import StdinSpool
from shoal.controller.targets import Target

__all__ = ["Handler", "Fleet", "FleetResult", "ConnectOptions"]


class Handler(Protocol):
    """Receives a run's events as they happen, in order per host."""

    def on_start(self, host: str) -> None: ...

    def on_output(self, host: str, stream: str, data: bytes) -> None: ...

    def on_result(self, result: Result) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How to reach agents; `key_for`/`ssl_for` allow per-target settings."""

    key: SharedKey | None = None
    ssl: ssl_module.SSLContext | None = None
    timeout: float = 10.0
    keepalive: float = 15.0
    key_for: Callable[[Target], SharedKey | None] | None = None
    ssl_for: Callable[[Target], ssl_module.SSLContext | None] | None = None

    async def connect(self, target: Target) -> AgentClient:
        key = self.key_for(target) if self.key_for else self.key
        ctx = self.ssl_for(target) if self.ssl_for else self.ssl
        return await AgentClient.connect(target, key=key, ssl=ctx, timeout=self.timeout,
                                         keepalive=self.keepalive)


@dataclass(slots=True)
class FleetResult:
    """All hosts' results, in completion order, plus the run's wall time."""

    results: list[Result] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def status(self) -> int:
        return fleet_status(self.results)

    def by_host(self) -> dict[str, Result]:
        return {r.host: r for r in self.results}


def failure_result(host: str, exc: BaseException) -> Result:
    """Turn a per-host exception into that host's result."""
    if isinstance(exc, AuthError):
        return Result(host, UNREACHABLE, error=exc.reason, error_code="auth_failed")
    if isinstance(exc, ShoalTimeoutError):
        return Result(host, UNREACHABLE, error=f"{exc.what} timed out after {exc.seconds:g}s", error_code="timeout_connect")
    if isinstance(exc, ShoalConnectionError):
        return Result(host, UNREACHABLE, error=exc.reason, error_code="unreachable")
    if isinstance(exc, RemoteCommandError):
        return Result(host, exc.status if exc.status is not None else 1, error=exc.reason, error_code=exc.code)
    if isinstance(exc, ShoalError):
        return Result(host, UNREACHABLE, error=str(exc), error_code="error")
    return Result(host, UNREACHABLE, error=f"internal error: {exc!r}", error_code="internal")


class Fleet:
    """A set of targets and how to reach them.

    Args:
        targets: the hosts, in display order.
        options: keys, TLS and timeouts for connecting.
        fanout: hosts connecting or running at once.
    """

    def __init__(self, targets: list[Target], options: ConnectOptions | None = None, fanout: int = 64) -> None:
        self.targets = targets
        self.options = options or ConnectOptions()
        self.fanout = max(1, fanout)
        self.processes: dict[str, RemoteProcess] = {}

    async def run(self, command: Command, handler: Handler, stdin: StdinSpool | None = None) -> FleetResult:
        """Run `command` everywhere; per-host failures become results, never raise."""
        start = time.monotonic()
        out = FleetResult()
        gate = asyncio.Semaphore(self.fanout)

        async def one(index: int, target: Target) -> None:
            async with gate:
                node = command.for_node(target.name, index, len(self.targets))
                result = await self._run_one(target, node, handler, stdin)
            out.results.append(result)
            handler.on_result(result)

        await asyncio.gather(*(one(i, t) for i, t in enumerate(self.targets)))
        out.elapsed = time.monotonic() - start
        return out

    async def _run_one(self, target: Target, command: Command, handler: Handler,
                       stdin: StdinSpool | None) -> Result:
        client: AgentClient | None = None
        try:
            client = await self.options.connect(target)
            handler.on_start(target.name)
            if stdin is not None:
                command = _with_stdin(command)
            proc = await client.exec(command)
            self.processes[target.name] = proc
            feeder = asyncio.create_task(_feed(proc, stdin)) if stdin is not None else None
            async for event in proc:
                handler.on_output(target.name, event.stream, event.data)
            result = await proc.wait()
            if feeder is not None:
                feeder.cancel()
            return result
        except (ShoalError, OSError) as exc:
            return failure_result(target.name, exc)
        finally:
            self.processes.pop(target.name, None)
            if client is not None:
                await client.close()

    def cancel(self, grace: float | None = None) -> None:
        """Cancel the command on every host where it is running."""
        for proc in list(self.processes.values()):
            proc.cancel(grace)

    def kill(self) -> None:
        for proc in list(self.processes.values()):
            proc.kill()

    def resize(self, rows: int, cols: int) -> None:
        """The local terminal changed size: tell every running `pty` command."""
        for proc in list(self.processes.values()):
            proc.resize(rows, cols)


def _with_stdin(command: Command) -> Command:
    from dataclasses import replace

    return replace(command, stdin=True)


async def _feed(proc: RemoteProcess, stdin: StdinSpool | None) -> None:
    assert stdin is not None
    async for chunk in stdin.chunks():
        await proc.write(chunk)
        await proc.client.drain()
    proc.close_stdin()

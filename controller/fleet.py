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

from shoal.protocol.errors import ShoalError
from shoal.protocol.defaults import OUTPUT_WINDOW
from shoal.protocol.handshake import SharedKey

from shoal.controller.client import AgentClient
from shoal.controller.hub.client import HubAccess
from shoal.controller.gateways import Gateways

from shoal.controller.remote import Command, RemoteProcess, Running
from shoal.controller.outcome import Outcome
from shoal.controller.result import CANCELLED_STATUS, Result, failure_result, fleet_status
from shoal.controller.stdin import StdinSpool
from shoal.controller.targets import Target
from shoal.controller.fanout import per_gateway
from shoal.controller.waves import WavePolicy, run_in_waves

__all__ = ["Handler", "Fleet", "FleetResult", "ConnectOptions", "FLEET_OUTPUT_BUDGET", "MIN_OUTPUT_WINDOW"]

# Output in flight across all running hosts: each host's window is its share, so a
# controller slower than its agents holds at most about this much unconsumed output
# (64 hosts x the 4 MiB default window would otherwise be 256 MiB, and each
# connection's frame buffer grows to its frames, which fit in its window).
FLEET_OUTPUT_BUDGET = 32 * 1024 * 1024
# No host's window is smaller than this, whatever the fan-out: throughput needs it.
MIN_OUTPUT_WINDOW = 256 * 1024


class Handler(Protocol):
    """Receives a run's events as they happen, in order per host."""

    def on_start(self, host: str) -> None: ...

    def on_output(self, host: str, stream: str, data: bytes) -> None: ...

    def on_result(self, result: Result) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How to reach agents; `key_for`/`ssl_for` allow per-target settings.

    With `hub`, targets are reached through that hub's warm connections (a link
    per target); targets with a `via` through their gateway, itself a hub link
    then, with the target's own key end to end. The hub connection and the
    gateway links live until `close()` (or the end of `async with`).
    """

    key: SharedKey | None = None
    ssl: ssl_module.SSLContext | None = None
    timeout: float = 10.0
    keepalive: float = 15.0
    key_for: Callable[[Target], SharedKey | None] | None = None
    ssl_for: Callable[[Target], ssl_module.SSLContext | None] | None = None
    hub: HubAccess | None = field(default=None, compare=False)
    gateways: Gateways = field(default_factory=Gateways, compare=False, repr=False)

    def key_of(self, target: Target) -> SharedKey | None:
        return self.key_for(target) if self.key_for else self.key

    def ssl_of(self, target: Target) -> ssl_module.SSLContext | None:
        return self.ssl_for(target) if self.ssl_for else self.ssl

    async def connect(self, target: Target) -> AgentClient:
        if target.via is not None:
            return await self.gateways.connect(target, self)
        if self.hub is not None:
            return await self.hub.link(target)
        return await AgentClient.connect(target, key=self.key_of(target), ssl=self.ssl_of(target),
                                         timeout=self.timeout, keepalive=self.keepalive)

    async def close(self) -> None:
        """Close what the targets were reached through: gateway links first, then the hub."""
        await self.gateways.close()
        if self.hub is not None:
            await self.hub.close()

    async def __aenter__(self) -> ConnectOptions:
        if self.hub is not None:
            await self.hub.open()  # a hub that is not running is one line, not one per host
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
        self.running = Running()  # cancel() and kill() reach these; once stopping, no host starts

    async def run(self, command: Command, handler: Handler, stdin: StdinSpool | None = None, *,
                  policy: WavePolicy = WavePolicy(),
                  on_wave: Callable[[int, int, list[str]], None] | None = None) -> FleetResult:
        """Run `command` everywhere; per-host failures become results, never raise.

        `policy` rolls the run in waves with a failure budget (`shoal.controller.waves`);
        hosts it never starts get a `skipped` result. `on_wave(n, count, hosts)` is
        called as each wave starts.

        What the handler raises (our own output failing) ends the run: every host's
        command is cancelled (its connection closed) and the handler's exception is
        raised here, unchanged, for the caller to map (a closed stdout is exit 141).
        """
        start = time.monotonic()
        out = FleetResult()
        local = _LocalGuard(handler)
        hops = len({t.via.name if t.via else None for t in self.targets})  # the fanout applies per gateway
        running = max(1, min(self.fanout * max(1, hops), len(self.targets)))
        window = max(MIN_OUTPUT_WINDOW, min(OUTPUT_WINDOW, FLEET_OUTPUT_BUDGET // running))

        def done(result: Result) -> None:
            out.results.append(result)
            local.on_result(result)

        count = len(self.targets)
        wave_hosts = None if on_wave is None else (
            lambda n, total, items: on_wave(n, total, [t.name for _, t in items]))
        try:
            await run_in_waves(list(enumerate(self.targets)),
                               lambda it: self._run_one(it[1], command.for_node(it[1].name, it[0], count), local,
                                                        stdin, window),
                               lambda it: it[1].name, policy=policy, limit=per_gateway(self.fanout, lambda it: it[1]),
                               on_done=done, on_wave=wave_hosts)
        except _LocalError as exc:  # our output failed (`| head` closed it): every host was stopped
            raise exc.original from None
        out.elapsed = time.monotonic() - start
        return out

    async def _run_one(self, target: Target, command: Command, handler: Handler,
                       stdin: StdinSpool | None, window: int) -> Result:
        client: AgentClient | None = None
        if self.running.stopping:
            return Result(target.name, CANCELLED_STATUS, cancelled=True, error="cancelled before it started",
                          error_code=Outcome.CANCELLED)
        feeder: asyncio.Task[None] | None = None
        try:
            client = await self.options.connect(target)
            handler.on_start(target.name)
            if stdin is not None:
                command = _with_stdin(command)
            proc = await client.exec(command, window)
            self.running.add(target.name, proc)
            feeder = asyncio.create_task(_feed(proc, stdin)) if stdin is not None else None
            async for event in proc:
                handler.on_output(target.name, event.stream, event.data)
            result = await proc.wait()
            if feeder is not None:
                feeder.cancel()
            return result
        except ShoalError as exc:
            return failure_result(target.name, exc)
        finally:
            if feeder is not None:
                feeder.cancel()
            self.running.remove(target.name)
            if client is not None:
                await client.close()

    def cancel(self, grace: float | None = None) -> None:
        """Cancel the command on every host where it is running; start it on no more."""
        self.running.cancel(grace)

    def kill(self) -> None:
        self.running.kill()

    def resize(self, rows: int, cols: int) -> None:
        """The local terminal changed size: tell every running `pty` command."""
        for proc in self.running.values():
            proc.resize(rows, cols)


class _LocalError(Exception):
    """The handler raised: a failure on our side (a closed stdout, a full disk), never the host's."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


class _LocalGuard:
    """Pass events to the handler; what it raises becomes a _LocalError, so `_run_one`
    cannot take it for the host's failure and mark a healthy host unreachable."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def on_start(self, host: str) -> None:
        try:
            self.handler.on_start(host)
        except Exception as exc:
            raise _LocalError(exc) from exc

    def on_output(self, host: str, stream: str, data: bytes) -> None:
        try:
            self.handler.on_output(host, stream, data)
        except Exception as exc:
            raise _LocalError(exc) from exc

    def on_result(self, result: Result) -> None:
        try:
            self.handler.on_result(result)
        except Exception as exc:
            raise _LocalError(exc) from exc


def _with_stdin(command: Command) -> Command:
    from dataclasses import replace

    return replace(command, stdin=True)


async def _feed(proc: RemoteProcess, stdin: StdinSpool | None) -> None:
    assert stdin is not None
    async for chunk in stdin.chunks():
        await proc.write(chunk)
        await proc.client.drain()
    proc.close_stdin()

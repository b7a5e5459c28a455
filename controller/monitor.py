"""Fleet-level monitoring: metrics snapshots and clock probes from many hosts at once.

A monitoring host asks many agents the same small question, so the pattern is
the fleet runner's: bounded fan-out, and a host's failure is that host's answer
(a reason string) rather than an exception that stops the others. The results
feed `metricsview` and `checks` directly, which take exactly that shape
(host -> snapshot dict or reason).

`FleetMonitor` keeps its connections open between rounds, so `shoal top`
refreshing every two seconds costs one request per host, not one handshake.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from shoal.protocol.errors import ShoalError, ShoalTimeoutError

from shoal.controller.client import AgentClient
from shoal.controller.fanout import fan_out, per_gateway
from shoal.controller.fleet import ConnectOptions
from shoal.controller.result import UNREACHABLE, failure_result
from shoal.controller.targets import Target

__all__ = [
    "FleetMonitor",
    "MetricsRound",
    "PingReport",
    "clock_offset",
    "gather_metrics",
    "ping_fleet",
]

T = TypeVar("T")

#: Seconds a connected agent gets to answer one metrics request or ping.
DEFAULT_REQUEST_TIMEOUT = 10.0


@dataclass(slots=True)
class MetricsRound:
    """One round of snapshots: host -> snapshot dict, or the reason there is none.

    `unreachable` names the hosts we could not talk to; the others without a
    snapshot refused (for instance a key without metrics rights).
    """

    snapshots: dict[str, dict[str, Any] | str] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    error_codes: dict[str, str | None] = field(default_factory=dict)

    def for_table(self) -> dict[str, dict[str, Any] | str]:
        """The snapshots with each unreachable host's reason marked "unreachable: ..."."""
        return {h: f"unreachable: {v}" if h in self.unreachable else v for h, v in self.snapshots.items()}

    @property
    def status(self) -> int:
        """0 when every host answered, 255 when one was unreachable, else 1."""
        if self.unreachable:
            return UNREACHABLE
        return 0 if all(isinstance(v, dict) for v in self.snapshots.values()) else 1


class FleetMonitor:
    """Connections to a set of hosts, kept open across rounds of questions.

    Args:
        targets: the hosts, in display order.
        options: keys, TLS and connect timeout.
        fanout: hosts connecting or being asked at once.
        request_timeout: seconds a connected host has to answer.
    """

    def __init__(self, targets: list[Target], options: ConnectOptions | None = None, fanout: int = 64,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.targets = targets
        self.options = options or ConnectOptions()
        self.fanout = max(1, fanout)
        self.request_timeout = request_timeout
        self.clients: dict[str, AgentClient] = {}
        self._gate = asyncio.Semaphore(self.fanout)

    async def client(self, target: Target) -> AgentClient:
        """The open connection to `target`, reconnecting when the last one was lost."""
        client = self.clients.get(target.name)
        if client is not None and not client.closed:
            return client
        if client is not None:
            await client.close()
        client = await self.options.connect(target)
        self.clients[target.name] = client
        return client

    async def ask(self, target: Target, question: Callable[[AgentClient], Awaitable[T]]) -> T:
        """Put one question to one host within the fan-out; failures raise ShoalError.

        A host that fails to answer in time is disconnected, so the next round
        starts from a fresh connection instead of a wedged one.
        """
        async with self._gate:
            client = await self.client(target)
            try:
                return await asyncio.wait_for(question(client), self.request_timeout)
            except ShoalError:
                raise
            except asyncio.TimeoutError:
                client.abort()
                raise ShoalTimeoutError("request", self.request_timeout, target.name) from None

    async def metrics(self) -> MetricsRound:
        """Every host's snapshot now, asked concurrently; never raises for a host's failure."""
        out = MetricsRound()

        async def one(target: Target) -> None:
            try:
                out.snapshots[target.name] = await self.ask(target, AgentClient.metrics)
            except ShoalError as exc:
                failed = failure_result(target.name, exc)
                out.snapshots[target.name] = failed.reason
                out.error_codes[target.name] = failed.error_code
                if failed.status == UNREACHABLE:
                    out.unreachable.add(target.name)

        await fan_out(self.targets, one)  # ask() keeps within the fan-out
        return out

    async def close(self) -> None:
        """Say goodbye to every host still connected."""
        clients, self.clients = list(self.clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> FleetMonitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def gather_metrics(targets: list[Target], options: ConnectOptions | None = None,
                         fanout: int = 64) -> MetricsRound:
    """One round of snapshots from `targets`, connections closed afterwards."""
    async with FleetMonitor(targets, options, fanout) as monitor:
        return await monitor.metrics()


# -- ping and clock offset ----------------------------------------------------

def clock_offset(t0: float, t1: float, t2: float, t3: float) -> float:
    """The peer's clock minus ours, NTP-style (RFC 5905 section 8).

    t0 we sent, t1 the peer received, t2 the peer replied, t3 we received.
    Exact when the two legs of the trip take equally long; otherwise off by at
    most half the round trip.
    """
    return ((t1 - t0) + (t2 - t3)) / 2


def _delay(t0: float, t1: float, t2: float, t3: float) -> float:
    """Time on the network: the round trip minus the peer's time holding the probe."""
    return (t3 - t0) - (t2 - t1)


@dataclass(frozen=True, slots=True)
class PingReport:
    """One host's probes: round trips in seconds, agent version and clock offset.

    `offset` comes from the probe with the least network delay, the one whose
    legs can be the least lopsided. `error` is set (and the rest empty) when the
    host could not be reached or stopped answering.
    """

    host: str
    rtts: tuple[float, ...] = ()
    offset: float | None = None
    version: str = ""
    error: str | None = None
    error_code: str | None = None

    @property
    def rtt_min(self) -> float:
        return min(self.rtts)

    @property
    def rtt_avg(self) -> float:
        return sum(self.rtts) / len(self.rtts)

    @property
    def rtt_max(self) -> float:
        return max(self.rtts)

    def skewed(self, max_offset: float) -> bool:
        """Whether the host's clock is off by more than `max_offset` seconds."""
        return self.offset is not None and abs(self.offset) > max_offset


async def _probe_host(client: AgentClient, count: int, interval: float) -> PingReport:
    samples: list[tuple[float, float, float, float]] = []
    version = ""
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        pong, t0, t3 = await client.ping()
        samples.append((t0, pong.t1, pong.t2, t3))
        version = pong.version or client.agent_version
    best = min(samples, key=lambda s: _delay(*s))
    return PingReport(client.name, tuple(t3 - t0 for t0, _, _, t3 in samples), clock_offset(*best), version)


async def ping_fleet(monitor: FleetMonitor, count: int = 3, interval: float = 0.2) -> list[PingReport]:
    """Probe every host `count` times, `interval` s apart; reports in target order."""
    if count < 1:
        raise ValueError(f"ping count must be at least 1, got {count}")

    async def one(target: Target) -> PingReport:
        timeout = monitor.request_timeout + count * interval
        try:
            client = await monitor.client(target)
            return await asyncio.wait_for(_probe_host(client, count, interval), timeout)
        except ShoalError as exc:  # before TimeoutError: ours is one too
            failed = failure_result(target.name, exc)
            return PingReport(target.name, error=failed.reason, error_code=failed.error_code)
        except asyncio.TimeoutError:
            monitor.clients.pop(target.name).abort()
            return PingReport(target.name, error=f"no answer within {timeout:g}s", error_code="timeout")

    return await fan_out(monitor.targets, one, limit=per_gateway(monitor.fanout, lambda t: t))

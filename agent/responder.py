"""Answering discovery probes over UDP (`shoal-agent --discovery`).

The responder tells a controller where this agent's TCP port is. It gives out
as little as it can and never more than it receives:

- a keyed probe is answered only when its MAC verifies with one of our keys,
  and the reply (carrying that key id) is MAC'd with the same key over the
  probe's nonce; a keyed probe for a key we lack gets no answer at all;
- an unauthenticated probe gets name, TCP port and version only, never a key id;
- replies are never longer than probes (the wire format guarantees it) and
  are rate limited per source address and in total, so spoofed probes cannot
  turn the agent into a flood aimed at someone else.

Where it listens (IPv4 and IPv6, loopback or every interface, which groups) is
`shoal.agent.respondersocket`'s business. Its sockets are watched with
`loop.add_reader`, so starting, reconfiguring and stopping are synchronous and
`Agent.reload` (SIGHUP) stays all or nothing: `prepare_reload` binds whatever
is new before anything changes, a socket that cannot be bound refuses the
reload while the old ones keep answering, and sockets whose address stays are
kept, so a rebind never fights the socket already holding the port.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.protocol.discovery import (
    MAX_NAME_BYTES,
    MAX_VERSION_BYTES,
    PROBE_SIZE,
    decode_probe,
    encode_reply,
    fit_utf8,
)
from shoal.protocol.errors import RemoteProtocolError

from shoal.agent.config import AgentConfig, DiscoveryConfig, parse_listen
from shoal.agent.respondersocket import BoundSocket, Endpoint, bind_host, bind_host6, plan_endpoints

if TYPE_CHECKING:
    from shoal.agent.server import Agent

__all__ = ["DiscoveryResponder", "DiscoveryReload", "RateLimiter", "start_responder", "prepare_reload",
           "bind_host", "bind_host6"]

log = logging.getLogger("shoal.agent.discovery")

#: Replies one source address may get: a burst, then this many per second.
#: A controller sends one probe per agent per run, so this is plenty.
PER_SOURCE_BURST = 5
PER_SOURCE_RATE = 1.0
#: Replies in total per second, whatever the sources claim to be.
TOTAL_BURST = 100
TOTAL_RATE = 50.0
#: Sources remembered at once; beyond it the quietest are forgotten.
MAX_SOURCES = 4096
#: Datagrams read per wake-up before letting the rest of the agent run.
READ_BATCH = 64


class _Bucket:
    """A token bucket: `burst` tokens, refilled at `rate` per second."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now

    def take(self, burst: float, rate: float, now: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RateLimiter:
    """Per-source and total reply budgets (token buckets)."""

    def __init__(self, burst: float = PER_SOURCE_BURST, rate: float = PER_SOURCE_RATE,
                 total_burst: float = TOTAL_BURST, total_rate: float = TOTAL_RATE) -> None:
        self.burst, self.rate = burst, rate
        self.total_burst, self.total_rate = total_burst, total_rate
        self._total = _Bucket(total_burst, time.monotonic())
        self._sources: dict[str, _Bucket] = {}

    def allow(self, source: str) -> bool:
        """Whether `source` may have one more reply now; takes a token if so."""
        now = time.monotonic()
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= MAX_SOURCES:
                self._forget(now)
            bucket = self._sources[source] = _Bucket(self.burst, now)
        if not bucket.take(self.burst, self.rate, now):
            return False
        return self._total.take(self.total_burst, self.total_rate, now)

    def _forget(self, now: float) -> None:
        """Drop sources whose bucket has refilled; if none has, the oldest half."""
        full = [s for s, b in self._sources.items() if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for source in full or sorted(self._sources, key=lambda s: self._sources[s].stamp)[:MAX_SOURCES // 2]:
            del self._sources[source]


class DiscoveryResponder:
    """Answers probes for one agent on every socket `shoal.agent.respondersocket` plans."""

    def __init__(self, agent: Agent, limiter: RateLimiter | None = None) -> None:
        self.agent = agent
        self.limiter = limiter or RateLimiter()
        self.name = ""
        self.version = fit_utf8(agent.software, MAX_VERSION_BYTES)
        self._loop = asyncio.get_running_loop()
        self._sockets: dict[tuple[int, str, int], BoundSocket] = {}

    @property
    def addresses(self) -> list[str]:
        """Where we answer, e.g. ["0.0.0.0:8470", "[::]:8470"]."""
        return [str(bound.endpoint) for bound in self._sockets.values()]

    def prepare(self, settings: DiscoveryConfig) -> _Change:
        """Bind the sockets `settings` needs that we lack; nothing answers differently yet.

        Raises ConfigError (naming the address) when one cannot be bound; those
        bound before it are closed again.
        """
        endpoints = plan_endpoints(self.agent.addresses, settings) if settings.enabled else []
        fresh: dict[tuple[int, str, int], BoundSocket] = {}
        try:
            for endpoint in endpoints:
                if endpoint.where not in self._sockets:
                    fresh[endpoint.where] = BoundSocket.open(endpoint)
        except BaseException:
            for bound in fresh.values():
                bound.close()
            raise
        name = fit_utf8(settings.name or socket.gethostname(), MAX_NAME_BYTES)
        return _Change(endpoints, fresh, name)

    def apply(self, change: _Change) -> None:
        """Answer as `change` says: close sockets no longer wanted, start the new ones."""
        wanted = {endpoint.where for endpoint in change.endpoints}
        for where in [w for w in self._sockets if w not in wanted]:
            self._remove(where)
        for endpoint in change.endpoints:
            bound = self._sockets.get(endpoint.where)
            if bound is None:
                bound = self._sockets[endpoint.where] = change.fresh[endpoint.where]
                self._loop.add_reader(bound.sock.fileno(), self._readable, bound)
            bound.endpoint = endpoint
            bound.set_group(endpoint.group)
        self.name = change.name

    def answering(self) -> bool:
        return bool(self._sockets)

    def _remove(self, where: tuple[int, str, int]) -> None:
        bound = self._sockets.pop(where)
        self._loop.remove_reader(bound.sock.fileno())
        bound.close()

    def close(self) -> None:
        for where in list(self._sockets):
            self._remove(where)

    def _readable(self, bound: BoundSocket) -> None:
        for _ in range(READ_BATCH):
            try:
                # One byte more than a probe, so an oversized datagram is seen as such.
                data, addr = bound.sock.recvfrom(PROBE_SIZE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("discovery socket %s: %s", bound.endpoint, exc)
                return
            reply = self.answer(data, addr[0], bound.endpoint.family)
            if reply is None:
                continue
            try:
                bound.sock.sendto(reply, addr)
            except OSError as exc:
                log.debug("could not answer %s: %s", addr[0], exc)

    def answer(self, data: bytes, source: str, family: int) -> bytes | None:
        """The reply `data` from `source` earns under the rules above, or None."""
        try:
            probe = decode_probe(data)
        except RemoteProtocolError as exc:
            log.debug("ignored datagram from %s: %s", source, exc)
            return None
        key = None
        if probe.key_id is not None:
            key = self.agent.keys.get(probe.key_id)
            if key is None or not probe.verify(key):
                log.debug("ignored probe from %s: key %s unknown or MAC wrong", source, probe.key_id)
                return None
        if not self.limiter.allow(source):
            log.debug("not answering %s: reply rate limit", source)
            return None
        return encode_reply(probe.nonce, _tcp_port(self.agent.addresses, family), self.name, self.version, key)


@dataclass(frozen=True, slots=True)
class _Change:
    """Sockets bound for a new setting, not yet answering."""

    endpoints: list[Endpoint]
    fresh: dict[tuple[int, str, int], BoundSocket]
    name: str

    def discard(self) -> None:
        for bound in self.fresh.values():
            bound.close()


def _tcp_port(addresses: list[str], family: int) -> int:
    """Our first TCP port reachable over `family` (any TCP port failing that; 0 for unix sockets only)."""
    ports = [(a.host or "", a.port or 0) for a in map(parse_listen, addresses) if a.kind == "tcp"]
    ipv6 = family == socket.AF_INET6
    for host, port in ports:
        if (":" in host) == ipv6:
            return port
    return ports[0][1] if ports else 0


class DiscoveryReload:
    """A new [discovery] setting, bound but not in effect: `commit()` or `abort()` it."""

    def __init__(self, agent: Agent, responder: DiscoveryResponder | None, change: _Change | None) -> None:
        self.agent, self.responder, self.change = agent, responder, change

    def commit(self) -> None:
        if self.responder is None or self.change is None:
            return
        before = self.responder.addresses
        self.responder.apply(self.change)
        self.agent.discovery = self.responder if self.responder.answering() else None
        _log_change(before, self.responder)

    def abort(self) -> None:
        if self.change is not None:
            self.change.discard()


def prepare_reload(agent: Agent, config: AgentConfig) -> DiscoveryReload:
    """Bind what `config.discovery` needs beyond what answers now (see the module docstring).

    Raises ConfigError, with nothing changed, when a new socket cannot be bound.
    """
    responder: DiscoveryResponder | None = agent.discovery
    if responder is None and config.discovery.enabled and agent.addresses:  # else start() will read it
        responder = DiscoveryResponder(agent)
    if responder is None:
        return DiscoveryReload(agent, None, None)
    return DiscoveryReload(agent, responder, responder.prepare(config.discovery))


def _log_change(before: list[str], responder: DiscoveryResponder) -> None:
    after = responder.addresses
    if after and after != before:
        log.info("answering discovery on %s/udp as %r", ", ".join(after), responder.name)
    elif before and not after:
        log.info("no longer answering discovery")


async def start_responder(agent: Agent) -> DiscoveryResponder:
    """Bind the discovery sockets and answer probes until `close()`.

    Raises ConfigError when one cannot be bound.
    """
    responder = DiscoveryResponder(agent)
    responder.apply(responder.prepare(agent.config.discovery))
    _log_change([], responder)
    return responder

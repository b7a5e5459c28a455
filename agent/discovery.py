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

Where it listens: an agent listening on loopback only answers on that loopback
address (telling the network about it would be pointless); otherwise it binds
all IPv4 interfaces, so broadcasts reach it, and joins `DEFAULT_GROUP`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, cast

from protocol.discovery import (
    DEFAULT_GROUP,
    MAX_NAME_BYTES,
    MAX_VERSION_BYTES,
    decode_probe,
    encode_reply,
    fit_utf8,
)
from protocol.errors import ConfigError, RemoteProtocolError

from .config import parse_listen

if TYPE_CHECKING:
    from .server import Agent

__all__ = ["DiscoveryResponder", "RateLimiter", "start_responder", "bind_host"]

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


class DiscoveryResponder(asyncio.DatagramProtocol):
    """Answers probes for one agent; see the module docstring for the rules."""

    def __init__(self, agent: Agent, limiter: RateLimiter | None = None) -> None:
        self.agent = agent
        self.limiter = limiter or RateLimiter()
        self.transport: asyncio.DatagramTransport | None = None
        self.name = fit_utf8(agent.config.discovery.name or socket.gethostname(), MAX_NAME_BYTES)
        self.version = fit_utf8(agent.software, MAX_VERSION_BYTES)
        self.tcp_port = _tcp_port(agent.addresses)
        self.address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = f"{host}:{port}"

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            probe = decode_probe(data)
        except RemoteProtocolError as exc:
            log.debug("ignored datagram from %s: %s", addr[0], exc)
            return
        key = None
        if probe.key_id is not None:
            key = self.agent.keys.get(probe.key_id)
            if key is None or not probe.verify(key):
                log.debug("ignored probe from %s: key %s unknown or MAC wrong", addr[0], probe.key_id)
                return
        if not self.limiter.allow(addr[0]):
            log.debug("not answering %s: reply rate limit", addr[0])
            return
        assert self.transport is not None
        self.transport.sendto(encode_reply(probe.nonce, self.tcp_port, self.name, self.version, key), addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("discovery socket error: %s", exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _tcp_port(addresses: list[str]) -> int:
    """The first TCP port we listen on; 0 when we listen on unix sockets only."""
    for address in addresses:
        if not address.startswith("unix:"):
            return int(address.rpartition(":")[2])
    return 0


def bind_host(listen: tuple[str, ...]) -> str:
    """The IPv4 address to answer on: our loopback one if we listen on loopback only."""
    hosts = [a.host or "" for a in map(parse_listen, listen) if a.kind == "tcp"]
    loopback = [h for h in hosts if _is_loopback(h)]
    if hosts and len(loopback) == len(hosts):
        return next((h for h in loopback if ":" not in h and h != "localhost"), "127.0.0.1")
    return "0.0.0.0"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _join_group(sock: socket.socket) -> None:
    """Join the discovery multicast group; a host without a multicast route just skips it."""
    request = socket.inet_aton(DEFAULT_GROUP) + socket.inet_aton("0.0.0.0")
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, request)
    except OSError as exc:
        log.warning("not answering multicast discovery on %s: %s", DEFAULT_GROUP, exc.strerror or exc)


async def start_responder(agent: Agent) -> DiscoveryResponder:
    """Bind the discovery port and answer probes until `close()`.

    Raises ConfigError when the port cannot be bound.
    """
    host = bind_host(agent.config.listen)
    port = agent.config.discovery.port
    loop = asyncio.get_running_loop()
    try:
        _, responder = await loop.create_datagram_endpoint(
            lambda: DiscoveryResponder(agent), local_addr=(host, port), family=socket.AF_INET)
    except OSError as exc:
        raise ConfigError(f"cannot answer discovery on {host}:{port}/udp: {exc.strerror or exc}",
                          "discovery.port") from exc
    if host == "0.0.0.0":
        assert responder.transport is not None
        _join_group(responder.transport.get_extra_info("socket"))
    log.info("answering discovery on %s/udp as %r", responder.address, responder.name)
    return responder

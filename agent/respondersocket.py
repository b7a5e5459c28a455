"""Where the discovery responder listens: which sockets, bound how, in which groups.

A reply names a TCP port, which is only useful if the controller can reach it
the way the probe came. So the UDP sockets follow the TCP addresses the agent
really listens on, one per address family:

- IPv4 when the agent has an IPv4 (or host name) TCP listener, or no TCP
  listener at all: on its loopback address when every IPv4 listener is on
  loopback (telling the network would be pointless), else on all IPv4
  interfaces, so broadcasts reach it, joining the IPv4 `group`;
- IPv6 when it has an IPv6 TCP listener: on ::1 when every one is loopback,
  else on all IPv6 interfaces, joining `group6` on every interface (a
  link-local group exists per link, so one join would hear one link only).

Sockets are plain non-blocking ones: opening, joining and closing are
synchronous, which lets `Agent.reload` bind everything new before it changes
anything. Joining happens before binding, so once the port shows as bound a
multicast probe is heard.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from shoal.protocol.errors import ConfigError

from shoal.agent.config import DiscoveryConfig, is_loopback, parse_listen

__all__ = ["Endpoint", "BoundSocket", "plan_endpoints", "bind_host", "bind_host6"]

log = logging.getLogger("shoal.agent.discovery")

# Every IPv4 interface the routing table picks for the group (INADDR_ANY).
_ANY_INTERFACE = 0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One socket to answer on; `group` is None on loopback (no multicast there)."""

    family: socket.AddressFamily
    host: str
    port: int
    group: str | None

    @property
    def where(self) -> tuple[int, str, int]:
        """What identifies the bound socket: a reload keeps a socket whose `where` stays."""
        return (self.family, self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == socket.AF_INET6 else f"{self.host}:{self.port}"


def plan_endpoints(addresses: Sequence[str], settings: DiscoveryConfig) -> list[Endpoint]:
    """The sockets to answer on, given the TCP addresses we listen on (see the module docstring)."""
    endpoints = []
    host = bind_host(addresses)
    if host is not None:
        endpoints.append(Endpoint(socket.AF_INET, host, settings.port,
                                  settings.group if host == "0.0.0.0" else None))
    host6 = bind_host6(addresses)
    if host6 is not None:
        endpoints.append(Endpoint(socket.AF_INET6, host6, settings.port,
                                  settings.group6 if host6 == "::" else None))
    return endpoints


def _tcp_hosts(listen: Sequence[str]) -> list[str]:
    return [a.host or "" for a in map(parse_listen, listen) if a.kind == "tcp"]


def bind_host(listen: Sequence[str]) -> str | None:
    """The IPv4 address to answer on, or None when we listen on IPv6 only."""
    hosts = _tcp_hosts(listen)
    ipv4 = [h for h in hosts if ":" not in h]
    if hosts and not ipv4:
        return None
    if ipv4 and all(map(is_loopback, ipv4)):
        return next((h for h in ipv4 if h != "localhost"), "127.0.0.1")
    return "0.0.0.0"


def bind_host6(listen: Sequence[str]) -> str | None:
    """The IPv6 address to answer on, or None when no TCP listener is IPv6."""
    ipv6 = [h for h in _tcp_hosts(listen) if ":" in h]
    if not ipv6:
        return None
    return "::1" if all(map(is_loopback, ipv6)) else "::"


class BoundSocket:
    """A bound, non-blocking UDP socket for one endpoint and the interfaces whose group it joined."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.group: str | None = None
        self.joined: set[int] = set()

    @classmethod
    def open(cls, endpoint: Endpoint) -> BoundSocket:
        """Join the endpoint's group, then bind; ConfigError naming the address when binding fails."""
        sock = socket.socket(endpoint.family, socket.SOCK_DGRAM)
        bound = cls(endpoint, sock)
        try:
            sock.setblocking(False)
            if endpoint.family == socket.AF_INET6:
                # Leave IPv4 to its own socket on the same port.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            bound.set_group(endpoint.group)
            sock.bind((endpoint.host, endpoint.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot answer discovery on {endpoint}/udp: {exc.strerror or exc}",
                              "discovery.port") from exc
        return bound

    def set_group(self, group: str | None) -> None:
        """Be in `group` (None: none) on every interface; a failed join is logged, not fatal.

        Interfaces that appeared since the last call are joined too, so a
        reload (SIGHUP) picks up new links.
        """
        if group != self.group:
            for index in self.joined:
                self._membership(self.group, index, join=False)
            self.group, self.joined = group, set()
        if group is None:
            return
        failure = ""
        for index in self._interfaces():
            if index in self.joined:
                continue
            try:
                self._membership(group, index, join=True)
                self.joined.add(index)
            except OSError as exc:
                failure = exc.strerror or str(exc)
                log.debug("cannot join %s on interface %d: %s", group, index, failure)
        if not self.joined:
            log.warning("not answering multicast discovery on %s: %s", group, failure)

    def _interfaces(self) -> list[int]:
        if self.endpoint.family == socket.AF_INET:
            return [_ANY_INTERFACE]
        return [index for index, _ in socket.if_nameindex()]

    def _membership(self, group: str | None, index: int, join: bool) -> None:
        assert group is not None
        if self.endpoint.family == socket.AF_INET:
            request = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
            option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
            level = socket.IPPROTO_IP
        else:
            request = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index)
            option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
            level = socket.IPPROTO_IPV6
        try:
            self.sock.setsockopt(level, option, request)
        except OSError:
            if join:
                raise  # leaving a group the kernel already dropped (interface gone) is fine

    def close(self) -> None:
        self.sock.close()

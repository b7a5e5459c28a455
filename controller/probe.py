"""Finding agents over UDP: send probes, keep the replies that check out.

The wire format is `shoal.protocol.discovery`; this module drives it. A reply is
believed only when

- it echoes a nonce we sent in this run (a reply recorded in an earlier run,
  or made up, carries another), and for a probe sent to one address, comes
  from that address;
- when we probed with a key, it carries our key id and its MAC verifies (an
  unauthenticated reply, or one forged without the key, is dropped).

Dropped replies are kept in `DiscoveryResult.ignored` with the reason, for
`shoal discover -v`. Probes are paced at `rate` per second so scanning a
subnet does not flood it. One run probes one address family: IPv4, or IPv6,
where a link-local address (ff02::..., fe80::...) names its interface after a
`%`, as in `ff02::8470:8470%eth0`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any, cast

from shoal.protocol.discovery import DEFAULT_PORT, Reply, decode_reply, encode_probe
from shoal.protocol.errors import ConfigError, RemoteProtocolError
from shoal.protocol.handshake import SharedKey, new_nonce

__all__ = [
    "FoundAgent",
    "DiscoveryResult",
    "DiscoveryClient",
    "discover",
    "subnet_addresses",
    "broadcast_addresses",
    "MAX_SUBNET_ADDRESSES",
]

#: Largest --subnet scanned in one run (a /16): beyond it, split the range.
MAX_SUBNET_ADDRESSES = 65536
#: Replies we remember having dropped, so a flood cannot grow memory.
MAX_IGNORED = 1000


@dataclass(frozen=True, slots=True)
class FoundAgent:
    """An agent that answered: where to connect and what it said about itself.

    `key_id` is set when the reply was authenticated with our key; without
    one, name and version are only the sender's word.
    """

    name: str
    address: str
    port: int
    version: str
    key_id: str | None

    @property
    def target(self) -> str:
        """The agent as a `shoal` target (host:port, [IPv6]:port)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclass(slots=True)
class DiscoveryResult:
    """Agents found (by address and TCP port) and replies dropped, with why."""

    found: list[FoundAgent] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    probes_sent: int = 0


class DiscoveryClient(asyncio.DatagramProtocol):
    """One UDP socket sending probes and judging the replies.

    Args:
        key: probe with this key and accept only replies MAC'd with it;
            None sends unauthenticated probes and accepts unauthenticated replies.
    """

    def __init__(self, key: SharedKey | None = None) -> None:
        self.key = key
        self.result = DiscoveryResult()
        self.transport: asyncio.DatagramTransport | None = None
        self._seen: set[tuple[str, int]] = set()
        # nonce -> the address it was sent to, or None when sent to many (broadcast).
        self._nonces: dict[bytes, str | None] = {}
        self._shared_nonce = new_nonce()
        self._answered: set[bytes] = set()
        self._all_sent = False
        self._sent_many = False
        self.expect: int | None = None
        self.done = asyncio.Event()

    @classmethod
    async def open(cls, key: SharedKey | None = None, bind: str = "0.0.0.0") -> DiscoveryClient:
        """Bind a UDP socket on `bind` (any port; "::" for IPv6), allowed to broadcast over IPv4."""
        loop = asyncio.get_running_loop()
        ipv6 = ":" in bind
        _, client = await loop.create_datagram_endpoint(
            lambda: cls(key), local_addr=(bind, 0), family=socket.AF_INET6 if ipv6 else socket.AF_INET,
            allow_broadcast=not ipv6)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def local_address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def probe(self, address: str, port: int = DEFAULT_PORT, *, many: bool = False) -> None:
        """Send one probe; `many` for a broadcast or multicast address (any source may reply)."""
        assert self.transport is not None
        if many:
            self._sent_many = True
            nonce = self._shared_nonce
            self._nonces[nonce] = None
        else:
            nonce = new_nonce()
            self._nonces[nonce] = _canonical(address)
        self.transport.sendto(encode_probe(nonce, self.key), _sockaddr(address, port))
        self.result.probes_sent += 1

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source = _source(addr)
        try:
            reply = decode_reply(data)
        except RemoteProtocolError as exc:
            return self._ignore(source, f"malformed reply: {exc}")
        reason = self._judge(reply, source)
        if reason is not None:
            return self._ignore(source, reason)
        if (source, reply.port) in self._seen:
            return
        self._seen.add((source, reply.port))
        self.result.found.append(FoundAgent(reply.name, source, reply.port, reply.version, reply.key_id))
        if self._nonces[reply.nonce] is not None:
            self._answered.add(reply.nonce)
        self._check_done()

    def all_sent(self) -> None:
        """No more probes will go out: from now on, stop when nothing more can come."""
        self._all_sent = True
        self._check_done()

    def _check_done(self) -> None:
        """Set `done` once `expect` agents answered, or every unicast probe was answered."""
        if self.expect is not None and len(self.result.found) >= self.expect:
            self.done.set()
        elif self._all_sent and not self._sent_many and len(self._answered) == len(self._nonces):
            self.done.set()

    def _judge(self, reply: Reply, source: str) -> str | None:
        """Why `reply` must be dropped, or None when it is to be believed."""
        if reply.nonce not in self._nonces:
            return "reply to a probe we did not send (stale, replayed or forged)"
        expected = self._nonces[reply.nonce]
        if expected is not None and expected != source:
            return f"reply to the probe sent to {expected} came from elsewhere"
        if self.key is None:
            return None if reply.key_id is None else "keyed reply to an unauthenticated probe"
        if reply.key_id is None:
            return "unauthenticated reply to a keyed probe"
        if not reply.verify(self.key):
            return "bad MAC (forged, or made with another key)"
        return None

    def _ignore(self, source: str, reason: str) -> None:
        if len(self.result.ignored) < MAX_IGNORED:
            self.result.ignored.append((source, reason))

    def error_received(self, exc: Exception) -> None:
        """An ICMP error for an earlier probe (port unreachable...): that host is just silent."""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _canonical(address: str) -> str:
    """`address` as the kernel reports a reply's source (`0:0::1` is `::1`)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _source(addr: tuple[Any, ...]) -> str:
    """A reply's source address; a link-local IPv6 one with its `%interface`, so it can be connected to."""
    host = str(addr[0])
    if len(addr) == 4 and addr[3] and "%" not in host:
        try:
            return f"{host}%{socket.if_indextoname(addr[3])}"
        except OSError:  # the interface went away meanwhile
            return f"{host}%{addr[3]}"
    return host


def _sockaddr(address: str, port: int) -> tuple[Any, ...]:
    """Where to send: an IPv6 address's `%interface` becomes the scope id sendto needs."""
    if ":" not in address:
        return (address, port)
    info = socket.getaddrinfo(address, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
    return tuple(info[0][4])


async def discover(destinations: list[str], port: int = DEFAULT_PORT, *, key: SharedKey | None = None,
                   timeout: float = 2.0, rate: float = 200.0, many: bool = False,
                   expect: int | None = None) -> DiscoveryResult:
    """Probe every destination at `rate` per second, then listen `timeout` seconds more.

    Listening ends early once every unicast probe has had its answer, or once
    `expect` agents have answered (broadcast replies can never all be known).

    Args:
        destinations: IPv4 or IPv6 addresses, one family per run; with `many`,
            broadcast or multicast ones (`ff02::8470:8470%eth0` names its interface).
        port: the agents' discovery port.
        key: authenticate probes and require authenticated replies.

    Returns:
        the agents found, in the order they answered, and the replies dropped.

    Raises:
        ConfigError: the socket cannot be opened or a probe cannot be sent.
    """
    if rate <= 0:
        raise ConfigError(f"the probe rate must be positive, got {rate:g}", "--rate")
    ipv6 = [":" in address for address in destinations]
    if any(ipv6) and not all(ipv6):
        raise ConfigError("probe IPv4 and IPv6 addresses in separate runs", "discover")
    loop = asyncio.get_running_loop()
    try:
        client = await DiscoveryClient.open(key, "::" if any(ipv6) else "0.0.0.0")
    except OSError as exc:
        raise ConfigError(f"cannot open a UDP socket: {exc.strerror or exc}", "discover") from exc
    try:
        client.expect = expect
        start = loop.time()
        for i, address in enumerate(destinations):
            due = start + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            client.probe(address, port, many=many)
        client.all_sent()
        try:
            await asyncio.wait_for(client.done.wait(), timeout)
        except asyncio.TimeoutError:
            pass
    finally:
        client.close()
    return client.result


def subnet_addresses(cidr: str) -> list[str]:
    """Every host address of an IPv4 or IPv6 block (both ends too for /31, /32, /127, /128).

    Raises ConfigError for a malformed or oversized block.
    """
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ConfigError(f"bad subnet {cidr!r}: {exc}", "--subnet") from None
    if network.num_addresses > MAX_SUBNET_ADDRESSES:
        size = "a /16" if network.version == 4 else "a /112"
        raise ConfigError(f"{cidr} has {network.num_addresses} addresses; scan at most "
                          f"{MAX_SUBNET_ADDRESSES} ({size}) at a time", "--subnet")
    return [str(a) for a in network.hosts()]


def broadcast_addresses() -> list[str]:
    """The directed broadcast address of every local IPv4 network, loopback excepted."""
    import psutil

    found: list[str] = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family != socket.AF_INET or not a.netmask:
                continue
            net = ipaddress.IPv4Network(f"{a.address}/{a.netmask}", strict=False)
            if net.is_loopback or net.prefixlen >= 31:
                continue
            if str(net.broadcast_address) not in found:
                found.append(str(net.broadcast_address))
    return found

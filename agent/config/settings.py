"""The agent's settings as frozen dataclasses, validated at construction."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from collections.abc import Callable, Hashable
from typing import Any

from shoal.protocol.errors import ConfigError
from shoal.protocol.defaults import OUTPUT_WINDOW, RELAY_WINDOW
from shoal.protocol.frames import DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_CEILING, MIN_MAX_FRAME_SIZE
from shoal.protocol.link import check_agent_name
from shoal.agent.config.checks import (
    _absolute_path, _boolean, _instance, _integer, _join, _kind, _reject_unknown, _seconds, _store, _strings, _text,
)
from shoal.agent.config.listen import DEFAULT_PORT, parse_connect, parse_listen
from shoal.agent.config.policy import KeyPolicy

__all__ = ["LOG_LEVELS", "AgentConfig", "DiscoveryConfig", "Limits", "TlsConfig"]

_DAY = 86400.0
_GIB = 1024 * 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for every TCP listener: our certificate and key, and the CA clients must chain to.

    All three go together: a certificate without a CA would accept any client the
    system trusts, which is not what an admin asking for mutual TLS means.
    """

    cert: str
    key: str
    ca: str

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            _absolute_path(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits; each bounds what a peer, or many, can make the agent hold.

    Attributes:
        max_connections: open connections. Bounds file descriptors and per-connection
            buffers against a flood of (possibly unauthenticated) clients.
        max_startups: connections still in the handshake (not yet authenticated), like
            sshd's MaxStartups. Kept well below max_connections so a flood of
            unauthenticated sockets cannot lock authenticated controllers out; when
            full, the oldest unauthenticated connection is shed for the new one.
        max_startups_per_source: connections still in the handshake from one source
            address (one for all unix-socket clients), like sshd's
            PerSourceMaxStartups; when full, that source's oldest is shed.
        max_commands: commands running at once on this agent. Bounds child processes,
            so a runaway controller cannot fill the process table.
        max_commands_per_connection: commands running at once on one connection, so
            one controller cannot take every slot from the others.
        max_frame_size: largest frame accepted, in bytes (64 KiB to 16 MiB). A frame is
            buffered whole, so this bounds memory per connection.
        stdin_window: bytes of stdin a controller may have in flight per request. Bounds
            memory when a child reads its stdin slower than the controller sends.
        output_window: bytes of output in flight per request before the agent stops
            reading the child's pipes. Bounds memory when the controller reads slowly;
            the child then blocks on a full pipe instead.
        handshake_timeout: seconds a new connection has to authenticate, so idle
            unauthenticated sockets cannot hold connection slots.
        idle_timeout: seconds without any frame (pings count) before a connection is
            dropped, so half-open connections of vanished controllers do not pile up.
        kill_grace: seconds between SIGTERM and SIGKILL when a command is cancelled, so
            children can clean up but cannot refuse to die.
        output_linger: seconds of output still read after a command's main process
            exits, while something it left behind holds its stdout or stderr open. Then
            EXIT is sent and the leftovers are ended, so `sleep 3600 &` cannot hold a
            request (its slot, its fds) open for an hour.
        job_output_size: bytes of each job's (detached command's) output kept in the
            agent's memory: the first half and the last half; what lies between is
            dropped, so a chatty job cannot grow the agent without bound.
        job_retention: seconds a finished job stays listed (and attachable) before
            the agent forgets it and its output.
        keepalive: seconds of TCP idleness before keepalive probes (also the probe
            interval base), so dead peers behind NAT or a crash are noticed.
        reconnect_min, reconnect_max: a dial-in agent's wait before reconnecting to
            its hub: random in [0, reconnect_min] at first, the range doubling with
            each failure up to reconnect_max, so a restarted hub is not met by every
            agent at once and no agent waits longer than reconnect_max.
        max_relays: relayed streams open at once on one connection (this agent as a
            gateway, issue 19), connecting ones included. With relay_window it bounds
            what one controller can make a gateway hold.
        relay_window: bytes a controller may send towards one relayed target before
            the target has taken them. The gateway holds at most this much, plus
            one read (64 KiB) the other way, per relayed target.
    """

    max_connections: int = 512
    max_startups: int = 64
    max_startups_per_source: int = 16
    max_commands: int = 1024
    max_commands_per_connection: int = 128
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    stdin_window: int = 1024 * 1024
    output_window: int = OUTPUT_WINDOW
    handshake_timeout: float = 5.0
    idle_timeout: float = 600.0
    kill_grace: float = 5.0
    output_linger: float = 2.0
    job_output_size: int = 1024 * 1024
    job_retention: float = 86400.0
    keepalive: float = 15.0
    reconnect_min: float = 2.0
    reconnect_max: float = 30.0
    max_relays: int = 4096
    relay_window: int = RELAY_WINDOW

    def __post_init__(self) -> None:
        _integer("max_connections", self.max_connections, 1, 1_000_000)
        _integer("max_startups", self.max_startups, 1, 1_000_000)
        _integer("max_startups_per_source", self.max_startups_per_source, 1, 1_000_000)
        _integer("max_commands", self.max_commands, 1, 1_000_000)
        _integer("max_commands_per_connection", self.max_commands_per_connection, 1, 1_000_000)
        _integer("max_frame_size", self.max_frame_size, MIN_MAX_FRAME_SIZE, MAX_FRAME_SIZE_CEILING)
        _integer("stdin_window", self.stdin_window, 4096, _GIB)
        _integer("output_window", self.output_window, 65536, _GIB)
        _store(self, "handshake_timeout", _seconds("handshake_timeout", self.handshake_timeout, 0, 300,
                                                   low_open=True))
        _store(self, "idle_timeout", _seconds("idle_timeout", self.idle_timeout, 0, 7 * _DAY, low_open=True))
        _store(self, "kill_grace", _seconds("kill_grace", self.kill_grace, 0, 3600))
        _store(self, "output_linger", _seconds("output_linger", self.output_linger, 0, 3600))
        _integer("job_output_size", self.job_output_size, 2, _GIB)
        _store(self, "job_retention", _seconds("job_retention", self.job_retention, 0, 30 * _DAY))
        _store(self, "keepalive", _seconds("keepalive", self.keepalive, 1, 7200))
        _store(self, "reconnect_min", _seconds("reconnect_min", self.reconnect_min, 0, 3600, low_open=True))
        _store(self, "reconnect_max", _seconds("reconnect_max", self.reconnect_max, 0, 86400, low_open=True))
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("reconnect_max must not be below reconnect_min", "reconnect_max")
        _integer("max_relays", self.max_relays, 1, 1_000_000)
        _integer("relay_window", self.relay_window, 4096, _GIB)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Answering controllers' discovery broadcasts; off by default (it reveals the agent).

    `group` is joined when the agent listens on a non-loopback IPv4 address,
    `group6` (on every interface) when it listens on a non-loopback IPv6 one.
    """

    enabled: bool = False
    port: int = DEFAULT_PORT
    name: str = ""  # empty means the hostname
    group: str = "239.255.84.70"  # shoal.protocol.discovery.DEFAULT_GROUP
    group6: str = "ff02::8470:8470"  # shoal.protocol.discovery.DEFAULT_GROUP6

    def __post_init__(self) -> None:
        _boolean("enabled", self.enabled)
        _integer("port", self.port, 1, 65535)
        name = _text("name", self.name)
        if len(name) > 253 or not name.isprintable():
            raise ConfigError("name must be printable and at most 253 characters", "name")
        _store(self, "group", _multicast_group("group", self.group, ipaddress.IPv4Address))
        _store(self, "group6", _multicast_group("group6", self.group6, ipaddress.IPv6Address))


def _multicast_group(name: str, value: object, cls: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str:
    """A multicast address of one family, in canonical form."""
    text = _text(name, value)
    family = "IPv4" if cls is ipaddress.IPv4Address else "IPv6"
    if "%" in text:
        raise ConfigError(f"{text!r}: give the group without %interface (it is joined on every one)", name)
    try:
        address = cls(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not an {family} address", name) from None
    if not address.is_multicast:
        raise ConfigError(f"{text!r} is not an {family} multicast group", name)
    return str(address)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything `shoal-agent` reads from /etc/shoal/agent.toml.

    Attributes:
        listen: addresses to listen on (see `parse_listen`).
        insecure: allow listening beyond loopback without any key.
        log_level: one of LOG_LEVELS.
        audit_log: JSON-lines file recording every command, or None for none.
        audit_required: refuse commands while the audit log cannot be written
            (default: run them and warn; agent/audit.py says why).
        state_dir: journals of in-progress transfers.
        tls: TLS for TCP listeners, or None for plain TCP.
        limits: resource limits.
        discovery: discovery responder settings.
        keys: named keys and their policies.
        connect: hubs to dial and stay connected to (`HOST[:PORT]`, issue 20); with
            these and no listen address the agent listens nowhere.
        name: the name announced to hubs (empty: this host's name).
    """

    listen: tuple[str, ...] = (f"127.0.0.1:{DEFAULT_PORT}",)
    insecure: bool = False
    log_level: str = "info"
    audit_log: str | None = None
    audit_required: bool = False
    state_dir: str = "/var/lib/shoal"
    tls: TlsConfig | None = None
    limits: Limits = field(default_factory=Limits)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    keys: tuple[KeyPolicy, ...] = ()
    connect: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        _store(self, "listen", _strings("listen", self.listen))
        _store(self, "connect", _strings("connect", self.connect))
        if not self.listen and not self.connect:
            raise ConfigError("at least one listen address (or a hub to connect to) is needed", "listen")
        _check_addresses("listen", self.listen, parse_listen, "listen address")
        _check_addresses("connect", self.connect, parse_connect, "hub")
        name = _text("name", self.name)
        if len(name) > 253 or not name.isprintable() or name != name.strip():
            raise ConfigError("name must be printable, without surrounding spaces, at most 253 characters", "name")
        problem = check_agent_name(name) if name and self.connect else None
        if problem is not None:  # no hub would take it: say so at start, not in each retry
            raise ConfigError(f"{problem}, which a hub refuses", "name")
        _boolean("insecure", self.insecure)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}",
                              "log_level")
        if self.audit_log is not None:
            _absolute_path("audit_log", self.audit_log)
        if _boolean("audit_required", self.audit_required) and self.audit_log is None:
            raise ConfigError("audit_required needs an audit log (audit_log)", "audit_required")
        _absolute_path("state_dir", self.state_dir)
        _instance("tls", self.tls, TlsConfig, optional=True)
        _instance("limits", self.limits, Limits)
        _instance("discovery", self.discovery, DiscoveryConfig)
        _store(self, "keys", _key_policies(self.keys))

    @classmethod
    def default(cls) -> AgentConfig:
        """The built-in settings: loopback only, no keys, no TLS."""
        return cls()

    def replace_from_cli(self, **overrides: Any) -> AgentConfig:
        """A copy with options replaced; names may be dotted (`limits.max_connections`).

        Raises ConfigError naming the option when it is unknown or its value invalid.
        """
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for name, value in overrides.items():
            section, dot, option = name.partition(".")
            if dot:
                nested.setdefault(section, {})[option] = value
            else:
                top[name] = value
        for section, options in nested.items():
            top[section] = _replace_section(self, section, options)
        _reject_unknown(top, AgentConfig, "")
        return dataclasses.replace(self, **top)


def _replace_section(config: AgentConfig, section: str, options: dict[str, Any]) -> Any:
    if section not in ("tls", "limits", "discovery"):
        raise ConfigError(f"unknown option '{section}.{next(iter(options))}'", section)
    current = getattr(config, section)
    if current is None:
        raise ConfigError("no TLS configured to change; give cert, key and ca together", section)
    _reject_unknown(options, type(current), section)
    try:
        return dataclasses.replace(current, **options)
    except ConfigError as exc:
        raise ConfigError(exc.reason, _join(section, exc.where)) from None


def _check_addresses(option: str, texts: tuple[str, ...], parse: Callable[[str], Hashable], what: str) -> None:
    """Each address parses, and none is given twice (as parsed: `hub` and `hub:8472` are one)."""
    seen: set[Hashable] = set()
    for index, text in enumerate(texts):
        try:
            address = parse(text)
        except ConfigError as exc:
            raise ConfigError(exc.reason, f"{option}[{index}]") from None
        if address in seen:
            raise ConfigError(f"{what} {text!r} given twice", f"{option}[{index}]")
        seen.add(address)


def _key_policies(keys: object) -> tuple[KeyPolicy, ...]:
    """Key policies as a tuple, refusing two with one name or one key file."""
    if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
        raise ConfigError(f"expected a list of keys, got {_kind(keys)}", "keys")
    names: dict[str, int] = {}
    files: dict[str, int] = {}
    for index, policy in enumerate(keys):
        _instance(f"keys[{index}]", policy, KeyPolicy)
        if policy.name in names:
            raise ConfigError(f"duplicate key name '{policy.name}'", f"keys[{index}].name")
        if policy.file in files:
            raise ConfigError(f"key file {policy.file!r} is already used by key "
                              f"'{keys[files[policy.file]].name}'", f"keys[{index}].file")
        names[policy.name] = files[policy.file] = index
    return tuple(keys)

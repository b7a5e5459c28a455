"""The agent's configuration: a TOML file, checked up front, written back by `dump_config`.

An agent runs as root and executes what its keys permit, so a mistyped option must
stop it at start with `path:line`, never be silently ignored: unknown keys, wrong
types, out-of-range limits, half a TLS setup and clashing key names are all errors.

Validation lives in the dataclasses, so settings built in code or from the command
line (`AgentConfig.replace_from_cli`) obey the same rules as the file. A dataclass
reports the offending option as a dotted name (`limits.max_frame_size`,
`keys[1].name`); `load_config` turns that name into the line of the file where it
is set, by scanning the text table by table (tomllib keeps no positions).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import math
import os
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shoal.protocol.errors import ConfigError
from shoal.protocol.defaults import OUTPUT_WINDOW
from shoal.protocol.frames import DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_CEILING, MIN_MAX_FRAME_SIZE
from shoal.agent import restrict

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_PORT",
    "MAX_FRAME_SIZE_CEILING",
    "LOG_LEVELS",
    "AgentConfig",
    "DiscoveryConfig",
    "KeyPolicy",
    "Limits",
    "ListenAddress",
    "TlsConfig",
    "dump_config",
    "load_config",
    "locate_option",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = "/etc/shoal/agent.toml"
DEFAULT_PORT = 8470
LOG_LEVELS = ("debug", "info", "warning", "error")
# Longest AF_UNIX socket path Linux accepts (sun_path is 108 bytes with the NUL).
_MAX_UNIX_PATH = 107
# Key names appear in logs and the audit log: keep them to one plain word.
_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DAY = 86400.0
_GIB = 1024 * 1024 * 1024


# -- value checks shared by the dataclasses ----------------------------------------
# Each raises ConfigError naming the field; the loader adds the table and the line.

def _integer(name: str, value: object, low: int, high: int) -> int:
    """An int (not a bool, which Python counts as one) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {_kind(value)}", name)
    if not low <= value <= high:
        raise ConfigError(f"{value} is out of range ({low} to {high})", name)
    return value


def _seconds(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite number of seconds within the range, stored as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"expected a number of seconds, got {_kind(value)}", name)
    number = float(value)
    too_low = number <= low if low_open else number < low
    if not math.isfinite(number) or too_low or number > high:
        bound = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise ConfigError(f"{value} is out of range ({bound} and at most {high:g})", name)
    return number


def _boolean(name: str, value: object) -> bool:
    """True or false, never a truthy stand-in such as 1 or "yes"."""
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {_kind(value)}", name)
    return value


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {_kind(value)}", name)
    if "\0" in value:
        raise ConfigError("NUL character in string", name)
    return value


def _absolute_path(name: str, value: object) -> str:
    """An absolute path: the service runs from /, so a relative one would mislead."""
    path = _text(name, value)
    if not os.path.isabs(path):
        raise ConfigError(f"path {path!r} must be absolute", name)
    return path


def _strings(name: str, value: object, check: Any = _text) -> tuple[str, ...]:
    """A list or tuple of strings, each passed through `check`, as a tuple."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"expected a list of strings, got {_kind(value)}", name)
    return tuple(check(f"{name}[{index}]", item) for index, item in enumerate(value))


def _kind(value: object) -> str:
    """Name a value's type the way a TOML author would."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", tuple: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _store(obj: object, name: str, value: object) -> None:
    """Normalise a field of a frozen dataclass during __post_init__ (list to tuple...)."""
    object.__setattr__(obj, name, value)


# -- listen addresses ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where the agent listens: a TCP host and port, or a unix socket path."""

    kind: Literal["tcp", "unix"]
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


def parse_listen(addr: str) -> ListenAddress:
    """Parse `HOST:PORT`, `[IPv6]:PORT` or `unix:/path`.

    Port 0 asks the system for a free port (tests use it). Raises ConfigError
    (where="listen") saying what is wrong and what form was expected.
    """
    if not isinstance(addr, str):
        raise ConfigError(f"expected a listen address string, got {_kind(addr)}", "listen")
    if addr.startswith("unix:"):
        return _parse_unix(addr, addr[5:])
    host, port = _split_host_port(addr)
    return ListenAddress("tcp", host=host, port=port)


def _parse_unix(addr: str, path: str) -> ListenAddress:
    if not path:
        raise ConfigError(f"bad listen address {addr!r}: no socket path after 'unix:'", "listen")
    if path.startswith("@") or "\0" in path:
        raise ConfigError(f"bad listen address {addr!r}: abstract sockets are not supported", "listen")
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise ConfigError(f"bad listen address {addr!r}: socket path longer than "
                          f"{_MAX_UNIX_PATH} bytes", "listen")
    return ListenAddress("unix", path=path)


def _split_host_port(addr: str) -> tuple[str, int]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad listen address {addr!r}: {why} "
                           "(expected HOST:PORT, [IPv6]:PORT or unix:/path)", "listen")

    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise bad("unclosed '[' or no ':PORT' after ']'")
        if not _is_ipv6(host):
            raise bad(f"{host!r} is not an IPv6 address")
        port_text = rest[1:]
    else:
        host, sep, port_text = addr.rpartition(":")
        if not sep:
            raise bad("no port")
        if ":" in host:
            raise bad("IPv6 addresses need brackets")
        if not host or any(c.isspace() for c in host):
            raise bad("no host (use 0.0.0.0 or [::] for every interface)" if not host else "space in host")
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65535:
        raise bad(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# -- the settings ------------------------------------------------------------------

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
        keepalive: seconds of TCP idleness before keepalive probes (also the probe
            interval base), so dead peers behind NAT or a crash are noticed.
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
    keepalive: float = 15.0

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
        _store(self, "keepalive", _seconds("keepalive", self.keepalive, 1, 7200))


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


# Words a command pattern may match: nothing a shell would expand or act on.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:=@%+,-]+")
_WILDCARD = re.compile(r"[*?\[]")


def _words_match(words: list[str], entry: str) -> bool:
    patterns = entry.split()
    return len(patterns) == len(words) and all(
        fnmatch.fnmatchcase(w, p) for w, p in zip(words, patterns))


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A named shared key and what a client holding it may do.

    `allow_all` permits every command, metrics and files (its other fields are then
    fixed: no command list, no file roots). A listed key may run only the command
    lines in `commands`. An entry matches the request's command line exactly as
    written, or, when it holds a wildcard (`*`, `?`, `[...]`), word by word as an
    fnmatch pattern. A pattern only ever matches plain words (letters, digits and
    `_./:=@%+,-`), never a word containing `..`, and the word counts must agree: so
    `systemctl status *` admits `systemctl status sshd` but not
    `systemctl status x; reboot`, `systemctl status $(reboot)` or a path escaping
    with `..`, and the shell is given nothing it could interpret.

    A listed key's request may set only the environment variables named in `env`
    and a working directory only when `cwd` is true; its programs are found on a
    fixed trusted PATH (agent/restrict.py says why).
    """

    name: str
    file: str
    allow_all: bool = False
    commands: tuple[str, ...] = ()
    metrics: bool = False
    files: bool = False
    file_roots: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    cwd: bool = False
    users: tuple[str, ...] | None = None  # issue 17: who its commands may run as (agent/runas.py)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _KEY_NAME.fullmatch(self.name):
            raise ConfigError("key name must be 1-64 letters, digits, '_', '.' or '-'", "name")
        _absolute_path("file", self.file)
        _boolean("allow_all", self.allow_all)
        _store(self, "commands", _strings("commands", self.commands, _command_entry))
        _boolean("metrics", self.metrics)
        _boolean("files", self.files)
        if self.file_roots is not None:
            roots = _strings("file_roots", self.file_roots, _absolute_path)
            _store(self, "file_roots", tuple(os.path.normpath(root) for root in roots))
        _store(self, "env", _strings("env", self.env, restrict.check_env_name))
        _boolean("cwd", self.cwd)
        if self.users is not None:  # issue 17
            _store(self, "users", _strings("users", self.users))
        self._check_combination()

    def _check_combination(self) -> None:
        if self.allow_all:
            if self.commands or self.file_roots is not None or self.env or self.cwd:
                where = next(name for name in ("commands", "file_roots", "env", "cwd")
                             if getattr(self, name) not in ((), None, False))
                raise ConfigError(f"'{where}' only applies to allow = \"listed\" keys", where)
            _store(self, "metrics", True)
            _store(self, "files", True)
        elif self.file_roots is not None and not self.files:
            raise ConfigError("file_roots needs files = true", "file_roots")

    def allows_command(self, argv: Sequence[str] | None, shell: str | None) -> bool:
        """Whether this key may run the command (a shell string, else an argv)."""
        if self.allow_all:
            return True
        if shell is not None:
            line, words = shell, shell.split()
        elif argv:
            line, words = shlex.join(argv), list(argv)
        else:
            return False
        if line in self.commands and not _WILDCARD.search(line):
            return True  # exactly as the admin wrote it (entries with wildcards are patterns)
        if not all(_PLAIN_WORD.fullmatch(w) and ".." not in w for w in words):
            return False
        return any(_words_match(words, entry) for entry in self.commands if _WILDCARD.search(entry))

    def refuse_request(self, argv: Sequence[str] | None, shell: str | None, env: Mapping[str, str],
                       cwd: str | None) -> str | None:
        """Why the request's env, cwd or program path may not be used under this key, or None."""
        if self.allow_all:
            return None
        words = shell.split() if shell is not None else list(argv or ())
        return restrict.refusal(self.env, self.cwd, words[0] if words else None, env, cwd)

    def allows_metrics(self) -> bool:
        return self.allow_all or self.metrics

    def allows_files(self, path: str) -> bool:
        """Whether this key may put or get `path`.

        Symlinks are resolved before comparing with the roots, so a link inside a
        root cannot point the transfer outside it. The check is made now; the file
        service must still open without following links swapped in afterwards.
        """
        if self.allow_all or (self.files and self.file_roots is None):
            return True
        if not self.files or not self.file_roots or not os.path.isabs(path):
            return False
        real = os.path.realpath(path)
        return any(_inside(real, os.path.realpath(root)) for root in self.file_roots)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _command_entry(name: str, value: object) -> str:
    entry = _text(name, value)
    if not entry.strip():
        raise ConfigError("empty command entry", name)
    return entry


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
        state_dir: journals of in-progress transfers and output of detached commands.
        tls: TLS for TCP listeners, or None for plain TCP.
        limits: resource limits.
        discovery: discovery responder settings.
        keys: named keys and their policies.
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

    def __post_init__(self) -> None:
        _store(self, "listen", _strings("listen", self.listen))
        if not self.listen:
            raise ConfigError("at least one listen address is needed", "listen")
        _check_listen(self.listen)
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


def _instance(name: str, value: object, cls: type, optional: bool = False) -> None:
    if not isinstance(value, cls) and not (optional and value is None):
        raise ConfigError(f"expected {cls.__name__}, got {type(value).__name__}", name)


def _check_listen(listen: tuple[str, ...]) -> None:
    seen: set[ListenAddress] = set()
    for index, text in enumerate(listen):
        try:
            address = parse_listen(text)
        except ConfigError as exc:
            raise ConfigError(exc.reason, f"listen[{index}]") from None
        if address in seen:
            raise ConfigError(f"listen address {text!r} given twice", f"listen[{index}]")
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


def _reject_unknown(table: Mapping[str, Any], cls: type, prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for name in table:
        if name not in known:
            raise ConfigError(f"unknown key '{name}'", _join(prefix, name))


def _join(prefix: str, name: str | None) -> str:
    if not name:
        return prefix
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


# -- reading -----------------------------------------------------------------------

def load_config(path: str | os.PathLike[str] = DEFAULT_CONFIG_PATH) -> AgentConfig:
    """Read and check an agent configuration file.

    Raises ConfigError with where="path:line" (or just the path when the file cannot
    be read) for syntax errors, unknown keys, wrong types and invalid values.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, exc, text) from None
    try:
        return config_from_table(data)
    except ConfigError as exc:
        raise ConfigError(exc.reason, _Locator(text).where(path, exc.where)) from None


def locate_option(path: str | os.PathLike[str], option: str) -> str:
    """`path:line` where a dotted option (`keys[1].file`) is set, or just the path.

    For messages about a value that was valid as text but turned out wrong later,
    such as a key file that cannot be loaded, so they point at the same line a
    `load_config` error would.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return path
    return _Locator(text).where(path, option)


def _syntax_error(path: str, exc: tomllib.TOMLDecodeError, text: str) -> ConfigError:
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column \d+\)$", message)
    if found is not None:
        return ConfigError(f"TOML syntax error: {message[:found.start()]}", f"{path}:{found.group(1)}")
    # An unclosed array or table runs to the end: name the last line, where it was cut.
    found = re.search(r"\s*\(at end of document\)$", message)
    if found is not None:
        return ConfigError(f"TOML syntax error: {message[:found.start()]} at end of file",
                           f"{path}:{max(1, len(text.splitlines()))}")
    return ConfigError(f"TOML syntax error: {message}", path)


def config_from_table(data: Mapping[str, Any]) -> AgentConfig:
    """Build an AgentConfig from parsed TOML; errors name the option as a dotted path."""
    _reject_unknown(data, AgentConfig, "")
    options = dict(data)
    if "tls" in data:
        options["tls"] = _tls_from_table(data["tls"])
    options["limits"] = _section(Limits, data.get("limits", {}), "limits")
    options["discovery"] = _section(DiscoveryConfig, data.get("discovery", {}), "discovery")
    keys = data.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(item, dict) for item in keys):
        raise ConfigError("expected [[keys]] tables", "keys")
    options["keys"] = tuple(_policy_from_table(item, f"keys[{i}]") for i, item in enumerate(keys))
    return AgentConfig(**options)


def _section(cls: type, table: object, prefix: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"expected a table, got {_kind(table)}", prefix)
    _reject_unknown(table, cls, prefix)
    try:
        return cls(**table)
    except ConfigError as exc:
        raise ConfigError(exc.reason, _join(prefix, exc.where)) from None


def _tls_from_table(table: object) -> TlsConfig:
    if isinstance(table, dict):
        missing = [name for name in ("cert", "key", "ca") if name not in table]
        if missing:
            raise ConfigError("tls needs cert, key and ca together; missing "
                              + ", ".join(f"'{name}'" for name in missing), "tls")
    tls: TlsConfig = _section(TlsConfig, table, "tls")
    return tls


def _policy_from_table(table: dict[str, Any], prefix: str) -> KeyPolicy:
    """Translate a [[keys]] table (`allow = "all"|"listed"`) into a KeyPolicy."""
    options = dict(table)
    allow = options.pop("allow", "listed")
    if allow not in ("all", "listed"):
        raise ConfigError(f"allow must be \"all\" or \"listed\", got {allow!r}", f"{prefix}.allow")
    for name in ("name", "file"):
        if name not in options:
            raise ConfigError(f"key needs '{name}'", prefix)
    if "allow_all" in options:
        raise ConfigError("unknown key 'allow_all' (use allow = \"all\")", f"{prefix}.allow_all")
    if allow == "all":
        for name in ("commands", "metrics", "files", "file_roots", "env", "cwd"):
            if name in options:
                raise ConfigError(f"'{name}' only applies to allow = \"listed\" keys "
                                  "(allow = \"all\" permits everything)", f"{prefix}.{name}")
    policy: KeyPolicy = _section(KeyPolicy, {**options, "allow_all": allow == "all"}, prefix)
    return policy


class _Locator:
    """Find the line where a dotted option (`keys[1].name`) is set in TOML text.

    tomllib keeps no positions, so we scan the lines: table headers set the
    current table (counting `[[array]]` entries), `key = value` lines name keys
    relative to it. Lines inside multi-line strings are skipped. An option not
    found falls back to its table, then to no line at all.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _ASSIGN = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                         r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        table = ""
        counts: dict[str, int] = {}
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                in_string = None if line.count(in_string) % 2 else in_string
                continue
            table = self._scan_line(line, number, table, counts)
            for quote in ('"""', "'''"):
                if line.count(quote) % 2:
                    in_string = quote

    def _scan_line(self, line: str, number: int, table: str, counts: dict[str, int]) -> str:
        header = self._HEADER.match(line)
        if header:
            name = _dotted(header.group(2))
            if header.group(1) == "[[":
                index = counts[name] = counts.get(name, -1) + 1
                name = f"{name}[{index}]"
            self.lines.setdefault(name, number)
            return name
        assign = self._ASSIGN.match(line)
        if assign:
            self.lines.setdefault(_join(table, _dotted(assign.group(1))), number)
        return table

    def where(self, path: str, option: str | None) -> str:
        while option:
            if option in self.lines:
                return f"{path}:{self.lines[option]}"
            option = re.sub(r"(\[\d+\]|\.[^.\[]*|^[^.\[]*)$", "", option)
        return path


def _dotted(key: str) -> str:
    """Normalise a TOML key (`a . "b"`) to our dotted form (`a.b`)."""
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return ".".join(part.strip("\"'") for part in parts)


# -- writing -----------------------------------------------------------------------

def dump_config(config: AgentConfig) -> str:
    """TOML text that `load_config` reads back into an equal AgentConfig."""
    lines = [f"listen = {_toml(list(config.listen))}",
             f"insecure = {_toml(config.insecure)}",
             f"log_level = {_toml(config.log_level)}"]
    if config.audit_log is not None:
        lines.append(f"audit_log = {_toml(config.audit_log)}")
        lines.append(f"audit_required = {_toml(config.audit_required)}")
    lines.append(f"state_dir = {_toml(config.state_dir)}")
    if config.tls is not None:
        lines += _table("[tls]", _fields(config.tls))
    lines += _table("[limits]", _fields(config.limits))
    lines += _table("[discovery]", _fields(config.discovery))
    for policy in config.keys:
        lines += _table("[[keys]]", _policy_fields(policy))
    return "\n".join(lines) + "\n"


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _policy_fields(policy: KeyPolicy) -> dict[str, Any]:
    options: dict[str, Any] = {"name": policy.name, "file": policy.file,
                               "allow": "all" if policy.allow_all else "listed"}
    if not policy.allow_all:
        options.update(commands=list(policy.commands), metrics=policy.metrics, files=policy.files)
        if policy.file_roots is not None:
            options["file_roots"] = list(policy.file_roots)
        options.update(env=list(policy.env), cwd=policy.cwd)
    if policy.users is not None:  # issue 17
        options["users"] = list(policy.users)
    return options


def _table(header: str, options: dict[str, Any]) -> list[str]:
    return ["", header] + [f"{name} = {_toml(value)}" for name, value in options.items()]


def _toml(value: object) -> str:
    """One TOML value: the types this schema uses, nothing more."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # finite by validation; repr keeps '.0' or an exponent
    if isinstance(value, str):
        return '"' + "".join(_toml_char(c) for c in value) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_char(char: str) -> str:
    """Escape a character for a TOML basic string (quotes, backslash, controls)."""
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    if char in escapes:
        return escapes[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\u{ord(char):04x}"
    return char

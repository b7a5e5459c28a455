"""The TOML inventory: named host groups and per-host connection settings.

Layout (every table optional)::

    [defaults]              port, key_file, tls_cert, tls_key, tls_ca, via
    [groups.NAME]           hosts = [patterns], groups = [nested group names], settings
    [hosts."PATTERN"]       settings for the hosts the pattern names

Settings resolve defaults < groups < hosts. A group's own settings yield to those of a
nested group that holds the host (`web` is more specific than `all`, which nests it);
between unrelated groups the one declared later in the file wins. Relative paths in
settings are taken from the inventory's directory, so a file works from any cwd.

The schema is closed: an unknown key is an error, never ignored, because a misspelt
`tls_cert` silently falling back to plain text is worse than refusing to start. Every
load error is a ConfigError whose `where` is `path:line`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.controller.nodeset import NodeSet
from shoal.controller.tomlfile import TomlLocator, config_home, read_toml
from shoal.controller.targets import cidr_block
from shoal.protocol.errors import ConfigError

__all__ = ["SETTING_NAMES", "Group", "Inventory", "default_inventory_path", "load_inventory"]

Settings = Mapping[str, str | int]
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING_NAMES = ("port", "key_file", "tls_cert", "tls_key", "tls_ca", "via")
_GROUP_KEYS = ("hosts", "groups", *SETTING_NAMES)
_TOP_KEYS = ("defaults", "groups", "hosts")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class Group:
    """One `[groups.NAME]` table, validated: its own hosts, nested groups and settings."""

    name: str
    patterns: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    settings: Settings = field(default_factory=dict)
    members: NodeSet = field(default_factory=NodeSet)
    networks: tuple[_Network, ...] = ()

    def holds_directly(self, name: str) -> bool:
        """Tell whether `name` is one of this group's own hosts (nested groups aside)."""
        if name in self.members:
            return True
        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


@dataclass(frozen=True, slots=True)
class Inventory:
    """A loaded inventory; the empty default means "no groups, built-in settings"."""

    path: Path | None = None
    defaults: Settings = field(default_factory=dict)
    group_table: Mapping[str, Group] = field(default_factory=dict)
    host_table: Mapping[str, Settings] = field(default_factory=dict)

    @property
    def groups(self) -> tuple[str, ...]:
        """Group names in the order the file declares them."""
        return tuple(self.group_table)

    def group_patterns(self, name: str) -> list[str]:
        """Return the host patterns of group `name` and of every group nested in it.

        Raises:
            ConfigError: the group is unknown, or nesting loops (the message shows the loop).
        """
        if name not in self.group_table:
            known = ", ".join(self.group_table) or "none"
            raise ConfigError(f"unknown group {name!r} (known groups: {known})", self._where())
        cycle = _find_cycle(self._nesting(), name)
        if cycle:
            raise ConfigError(f"group nesting loops: {' -> '.join(cycle)}", self._where())
        patterns = [p for group in self._descendants(name) for p in group.patterns]
        return list(dict.fromkeys(patterns))

    def host_names(self) -> list[str]:
        """Every host name the file lists, in groups or `[hosts]` tables, in file order.

        CIDR blocks in groups are left out: they stand for addresses, not names.
        """
        names = [name for group in self.group_table.values() for name in group.members]
        return list(dict.fromkeys(names + list(self.host_table)))

    def settings_for(self, name: str) -> dict[str, str | int]:
        """Return the merged settings for host `name`: defaults, then groups, then hosts."""
        merged = dict(self.defaults)
        for group in self.group_table:
            merged.update(self._group_settings(group, name) or {})
        merged.update(self.host_table.get(name, {}))
        return merged

    def _where(self) -> str | None:
        """Name the file in errors raised after loading, when there is one."""
        return str(self.path) if self.path else None

    def _nesting(self) -> dict[str, tuple[str, ...]]:
        """Map each group to the groups it nests."""
        return {name: group.children for name, group in self.group_table.items()}

    def _descendants(self, name: str) -> Iterator[Group]:
        """Yield a group then every group nested under it, each once, depth first."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            current = stack.pop()
            if current in seen or current not in self.group_table:
                continue
            seen.add(current)
            group = self.group_table[current]
            yield group
            stack.extend(reversed(group.children))

    def _group_settings(self, name: str, host: str) -> dict[str, str | int] | None:
        """Settings group `name` gives `host`, nested groups winning; None if not a member."""
        group = self.group_table[name]
        inner: dict[str, str | int] | None = {} if group.holds_directly(host) else None
        for child in group.children:
            nested = self._group_settings(child, host) if child in self.group_table else None
            if nested is not None:
                inner = {**(inner or {}), **nested}
        return None if inner is None else {**group.settings, **inner}


def _find_cycle(nesting: Mapping[str, tuple[str, ...]], start: str) -> list[str] | None:
    """Return a nesting loop reachable from `start` as `[a, b, a]`, or None."""
    trail: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in trail:
            return trail[trail.index(name):] + [name]
        if name in done or name not in nesting:
            return None
        trail.append(name)
        for child in nesting[name]:
            found = visit(child)
            if found:
                return found
        trail.pop()
        done.add(name)
        return None

    return visit(start)


def default_inventory_path() -> Path:
    """Return `$SHOAL_INVENTORY`, else `$XDG_CONFIG_HOME/shoal/inventory.toml`."""
    explicit = os.environ.get("SHOAL_INVENTORY")
    if explicit:
        return Path(explicit).expanduser()
    return config_home() / "inventory.toml"


def load_inventory(path: str | os.PathLike[str] | None = None) -> Inventory:
    """Read and validate an inventory file.

    Args:
        path: the file; None means `default_inventory_path()`, whose absence is fine
            (an empty inventory) unless it came from `$SHOAL_INVENTORY`.

    Raises:
        ConfigError: missing explicit file, unreadable file, bad TOML, unknown key,
            wrong type, bad pattern or group nesting; `where` is `path:line`.
    """
    optional = path is None and not os.environ.get("SHOAL_INVENTORY")
    file = Path(path) if path is not None else default_inventory_path()
    found = read_toml(file, "inventory", missing_ok=optional)
    if found is None:
        return Inventory()
    data, text = found
    return _Loader(file, text).build(data)


class _Loader(TomlLocator):
    """Validate parsed TOML against the inventory schema, locating each error in the file."""

    def build(self, data: dict[str, Any]) -> Inventory:
        """Validate the whole document into an Inventory."""
        self.check_keys(data, _TOP_KEYS, ())
        defaults = self.settings(self.table(data, "defaults", ()), ("defaults",))
        groups = {name: self.group(name, table)
                  for name, table in self.table(data, "groups", ()).items()}
        self.check_nesting(groups)
        hosts = self.hosts(self.table(data, "hosts", ()))
        return Inventory(self.file, defaults, groups, hosts)

    def settings(self, table: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, str | int]:
        """Validate connection settings: a port number and file paths."""
        self.check_keys(table, SETTING_NAMES, keys)
        found: dict[str, str | int] = {}
        for name in SETTING_NAMES:
            if name in table:
                found[name] = self.setting(name, table[name], keys + (name,))
        return found

    def setting(self, name: str, value: Any, keys: tuple[str, ...]) -> str | int:
        """Check one setting; resolve a relative path against the inventory's directory."""
        if name == "port":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
                raise self.error(f"port must be an integer from 1 to 65535, not {value!r}", keys)
            return value
        if name == "via":  # gateways, `gw1` or a chain `gw1,gw2` (targets.py resolves them)
            if not isinstance(value, str) or value and not all(part.strip() for part in value.split(",")):
                raise self.error(f"via must name gateways, \"gw1\" or \"gw1,gw2\", not {value!r}", keys)
            return value
        return self.path(name, value, keys)

    def string_list(self, value: Any, keys: tuple[str, ...]) -> list[str]:
        """Insist on a list of non-empty strings."""
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(f"{keys[-1]} must be a list of non-empty strings", keys)
        return value

    def group(self, name: str, table: Any) -> Group:
        """Validate one `[groups.NAME]` table."""
        keys = ("groups", name)
        if not _GROUP_NAME.fullmatch(name):
            raise self.error(f"bad group name {name!r}: use letters, digits, '_', '.', '-'", keys)
        if not isinstance(table, dict):
            raise self.error(f"groups.{name} must be a table", keys)
        self.check_keys(table, _GROUP_KEYS, keys)
        patterns = self.string_list(table.get("hosts", []), keys + ("hosts",))
        children = self.string_list(table.get("groups", []), keys + ("groups",))
        members, networks = self.members(patterns, keys + ("hosts",))
        settings = self.settings({k: v for k, v in table.items() if k in SETTING_NAMES}, keys)
        return Group(name, tuple(patterns), tuple(children), settings, members, networks)

    def members(self, patterns: list[str], keys: tuple[str, ...]) -> tuple[NodeSet, tuple[_Network, ...]]:
        """Expand a group's host patterns, keeping CIDR blocks as networks."""
        names: set[str] = set()
        networks: list[_Network] = []
        for pattern in patterns:
            try:
                if pattern.startswith("@"):
                    raise ConfigError(f"{pattern!r}: nest groups with groups = [...], not '@'")
                block = cidr_block(pattern)
                if block is not None:
                    networks.append(block)
                else:
                    names.update(NodeSet(pattern))
            except ConfigError as exc:
                raise self.error(exc.reason, keys, pattern) from None
        return NodeSet(names), tuple(networks)

    def check_nesting(self, groups: Mapping[str, Group]) -> None:
        """Refuse nested groups that do not exist or that loop."""
        for name, group in groups.items():
            for child in group.children:
                if child not in groups:
                    raise self.error(f"group {name!r} nests unknown group {child!r}",
                                     ("groups", name, "groups"), child)
        nesting = {name: group.children for name, group in groups.items()}
        for name in groups:
            cycle = _find_cycle(nesting, name)
            if cycle:
                raise self.error(f"group nesting loops: {' -> '.join(cycle)}",
                                 ("groups", cycle[-2], "groups"), cycle[-1])

    def hosts(self, table: Mapping[str, Any]) -> dict[str, dict[str, str | int]]:
        """Validate `[hosts."PATTERN"]` tables; later tables win where patterns overlap."""
        found: dict[str, dict[str, str | int]] = {}
        for pattern, settings in table.items():
            keys = ("hosts", pattern)
            if not isinstance(settings, dict):
                raise self.error(f"hosts.{pattern!r} must be a table of settings", keys)
            try:
                names = NodeSet(pattern)
            except ConfigError as exc:
                raise self.error(exc.reason, keys) from None
            checked = self.settings(settings, keys)
            for name in names:
                found.setdefault(name, {}).update(checked)
        return found


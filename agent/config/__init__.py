"""The agent's configuration: a TOML file, checked up front, written back by `dump_config`.

An agent runs as root and executes what its keys permit, so a mistyped option must
stop it at start with `path:line`, never be silently ignored: unknown keys, wrong
types, out-of-range limits, half a TLS setup and clashing key names are all errors.

Validation lives in the dataclasses, so settings built in code or from the command
line (`AgentConfig.replace_from_cli`) obey the same rules as the file. A dataclass
reports the offending option as a dotted name (`limits.max_frame_size`,
`keys[1].name`); `load_config` turns that name into the line of the file where it
is set, by scanning the text table by table (tomllib keeps no positions).

The package holds one concern per module: `checks` (value checks), `listen`
(listen addresses), `policy` (what a key may do), `settings` (the dataclasses) and
`tomlio` (reading and writing agent.toml). Import from here.
"""

from __future__ import annotations

from shoal.protocol.frames import MAX_FRAME_SIZE_CEILING
from shoal.agent.config.listen import DEFAULT_PORT, ListenAddress, is_loopback, parse_connect, parse_listen
from shoal.agent.config.policy import KeyPolicy
from shoal.agent.config.settings import LOG_LEVELS, AgentConfig, DiscoveryConfig, Limits, TlsConfig
from shoal.agent.config.tomlio import DEFAULT_CONFIG_PATH, dump_config, load_config, locate_option

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
    "is_loopback",
    "load_config",
    "locate_option",
    "parse_connect",
    "parse_listen",
]

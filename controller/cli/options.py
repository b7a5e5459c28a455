"""Option groups shared by subcommands, so every flag is spelled the same everywhere,
and the helpers that turn parsed options into library objects."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import ssl as ssl_module
from collections.abc import Coroutine
from typing import Any, TypeVar

from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey

from shoal.controller.remote import Command
from shoal.controller.fleet import ConnectOptions
from shoal.controller.targets import Target
from shoal.controller.waves import WavePolicy, parse_count

__all__ = [
    "add_target_options",
    "add_connect_options",
    "add_output_options",
    "add_outdir_failed_options",
    "add_exec_options",
    "parse_size",
    "add_idle_timeout_option",
    "add_rolling_options",
    "wave_policy_from_args",
    "targets_from_args",
    "connect_options_from_args",
    "run_with",
    "command_from_args",
    "add_config_options",
    "with_user_config",
    "color_from_args",
]


def add_target_options(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    parser.add_argument("targets", metavar="TARGETS", nargs="?" if optional else None,
                        help="comma-separated hosts: name, host:port, [v6]:port, unix:/path, "
                             "ranges web[01-20] or web[1-9/2], CIDR 10.0.0.0/28, @group; "
                             "combine with ! (minus), & (and), ^ (xor), left to right")
    parser.add_argument("-x", "--exclude", metavar="PATTERN", help="hosts to leave out (same syntax)")
    parser.add_argument("--inventory", metavar="PATH",
                        help="inventory TOML (default: $SHOAL_INVENTORY or ~/.config/shoal/inventory.toml)")
    parser.add_argument("--yes", action="store_true", help="allow target patterns that expand to very many hosts")


def add_connect_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection")
    g.add_argument("--key-file", metavar="PATH", help="shared key for HMAC authentication (shoal keygen)")
    g.add_argument("--tls-cert", metavar="PATH", help="controller certificate for mutual TLS")
    g.add_argument("--tls-key", metavar="PATH", help="private key of --tls-cert")
    g.add_argument("--tls-ca", metavar="PATH", help="CA that signed the agents' certificates")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECS",
                   help="give up on a host that has not connected and authenticated in SECS (default 10)")
    g.add_argument("-f", "--fanout", type=int, default=64, metavar="N",
                   help="hosts connecting or running at once (default 64)")
    g.add_argument("--hub", metavar="PATH",
                   help="reach the targets through the hub serving this local socket (shoal hub), "
                        "by the names it knows them by; '' for none")
    g.add_argument("--via", metavar="GW[,GW2]",
                   help="reach every target through this gateway agent (a chain: through GW, then GW2), "
                        "instead of the inventory's via; '' for none")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("-o", "--output", choices=("stream", "gather", "json"), default=None,
                   help="stream lines as they come (default on a TTY), gather identical output, or JSON events")
    g.add_argument("--raw", action="store_true",
                   help="with one host: pass output through byte-exact, no prefix (default when stdout is not a TTY)")
    add_outdir_failed_options(g, outdir_help="also write each host's output to DIR/HOST.out and DIR/HOST.err",
                              failed_only_help="after the run, list only failed hosts and why")
    g.add_argument("--diff", action="store_true",
                   help="gather, then show each distinct output as a unified diff against the most common one")
    g.add_argument("--max-output", type=parse_size, metavar="SIZE",
                   help="keep the first and last of each host's stdout and stderr up to SIZE (64K, 16M, 1G; "
                        "0 or none: all), with a gap line between; default 16M with -o gather, none otherwise; "
                        "--outdir files keep everything")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no summary or progress, and no line for a host whose command failed; "
                        "hosts that could not run it still get theirs")
    g.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """`64K`, `16M`, `1G` (binary units; `KiB`, `MB` too), plain bytes; `0` or `none`: no limit (0)."""
    if text.strip().lower() == "none":
        return 0
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (like 64K, 16M, 1G, or none)")
    return int(float(match[1]) * _SIZE_UNITS[match[2].upper()])


def add_outdir_failed_options(group: argparse._ArgumentGroup, *, outdir_help: str, failed_only_help: str) -> None:
    """--outdir and --failed-only, spelled once for run and batch; each says what they mean there."""
    group.add_argument("--outdir", metavar="DIR", help=outdir_help)
    group.add_argument("--failed-only", action="store_true", help=failed_only_help)


def add_idle_timeout_option(group: argparse._ArgumentGroup) -> None:
    """--idle-timeout, spelled once for run and batch."""
    group.add_argument("--idle-timeout", type=_positive_seconds, metavar="SECS",
                       help="kill the command's process tree once it has printed nothing for SECS "
                            "(decided on the agent; outcome idle_timeout)")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text!r}")
    return value


def add_exec_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("command")
    g.add_argument("-t", "--timeout", type=float, metavar="SECS",
                   help="kill the command's process tree after SECS (SIGTERM, then SIGKILL)")
    add_idle_timeout_option(g)
    g.add_argument("--kill-grace", type=float, metavar="SECS", help="seconds between SIGTERM and SIGKILL")
    g.add_argument("--cwd", metavar="DIR", help="working directory on the hosts")
    g.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="environment variable (repeatable)")
    g.add_argument("--argv", action="store_true",
                   help="run the command's words as an argv, without /bin/sh (default joins them for the shell, like ssh)")
    g.add_argument("-n", "--no-stdin", action="store_true", help="do not forward standard input")
    add_user_option(g)
    g.add_argument("--pty", action="store_true",
                   help="run on a pseudo-terminal on each host (stdout and stderr merged; "
                        "a terminal's keys go through raw, its size follows)")
    g.add_argument("--detach", action="store_true",
                   help="start it as a job the agent keeps, with its output, and return at once "
                        "(shoal jobs, attach, kill); --timeout, --idle-timeout and --user apply")


def add_user_option(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument("-u", "--user", metavar="NAME",
                       help="run as this user on the hosts (the agent runs as root and the key allows NAME)")
def add_rolling_options(parser: argparse.ArgumentParser) -> None:
    """--serial, --serial-wait, --max-fail and --canary, spelled once for run, batch and put."""
    g = parser.add_argument_group("rolling")
    g.add_argument("--serial", metavar="N|N%",
                   help="run the hosts in waves of N (or N%% of the targets, rounded down, at least 1); "
                        "each wave starts when the previous one has finished")
    g.add_argument("--serial-wait", type=float, default=0.0, metavar="SECS",
                   help="pause SECS between waves")
    g.add_argument("--max-fail", metavar="N|N%",
                   help="once more than N (or N%% of the targets, rounded down) hosts have failed, start no "
                        "more; running hosts finish, the rest are skipped")
    g.add_argument("--canary", type=int, default=0, metavar="N",
                   help="run the first N hosts alone first; any failure among them skips the rest")


def wave_policy_from_args(args: argparse.Namespace) -> WavePolicy:
    """The rolling options as the library's WavePolicy."""
    if args.serial_wait < 0:
        raise ConfigError("must not be negative", "--serial-wait")
    if args.canary < 0:
        raise ConfigError("must not be negative", "--canary")
    serial = parse_count(args.serial, "--serial", minimum=1) if args.serial is not None else None
    max_fail = parse_count(args.max_fail, "--max-fail") if args.max_fail is not None else None
    return WavePolicy(serial=serial, wait=args.serial_wait, max_fail=max_fail, canary=args.canary)


def targets_from_args(args: argparse.Namespace) -> list[Target]:
    from shoal.controller.inventory import load_inventory
    from shoal.controller.targets import parse_targets

    inventory = load_inventory(args.inventory)
    targets = parse_targets(args.targets, exclude=args.exclude, inventory=inventory, allow_large=args.yes,
                            via=getattr(args, "via", None))
    if not targets:
        raise ConfigError("no hosts match", args.targets)
    return targets


def _load_key(path: str) -> SharedKey:
    from shoal.hostio.keyfile import load_key_file

    return load_key_file(path)


def _client_ssl(cert: str, key: str, ca: str) -> ssl_module.SSLContext:
    from shoal.hostio.tls import client_context

    return client_context(cert, key, ca)


def connect_options_from_args(args: argparse.Namespace) -> ConnectOptions:
    """Keys and TLS from options, with per-target overrides from the inventory.

    Each call reads the files again (a hub's SIGHUP); within one call's options each
    key file is read, and each TLS context built, once for all the targets naming it.
    """
    load_key = functools.lru_cache(maxsize=64)(_load_key)
    client_ssl = functools.lru_cache(maxsize=64)(_client_ssl)
    default_key = load_key(os.path.expanduser(args.key_file)) if args.key_file else None
    tls_given = [args.tls_cert, args.tls_key, args.tls_ca]
    if any(tls_given) and not all(tls_given):
        raise ConfigError("--tls-cert, --tls-key and --tls-ca go together", "tls")

    def key_for(target: Target) -> SharedKey | None:
        return load_key(os.path.expanduser(target.key_file)) if target.key_file else default_key

    def ssl_for(target: Target) -> ssl_module.SSLContext | None:
        files = (target.tls_cert, target.tls_key, target.tls_ca)
        cert, key, ca = files
        if cert and key and ca:
            return client_ssl(os.path.expanduser(cert), os.path.expanduser(key), os.path.expanduser(ca))
        if all(tls_given):
            return client_ssl(args.tls_cert, args.tls_key, args.tls_ca)
        return None

    hub = getattr(args, "hub", None)
    if hub:
        from shoal.controller.hub.client import HubAccess

        access = HubAccess(os.path.expanduser(hub), args.connect_timeout)
        return ConnectOptions(timeout=args.connect_timeout, key_for=key_for, ssl_for=ssl_for, hub=access)
    return ConnectOptions(timeout=args.connect_timeout, key_for=key_for, ssl_for=ssl_for)


T = TypeVar("T")


def run_with(options: ConnectOptions, main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` with `options` open around it: its hub connected first (a hub
    that is not running is one line) and closed on the same loop at the end."""

    async def scope() -> T:
        async with options:
            return await main

    try:
        return asyncio.run(scope())
    finally:
        main.close()  # never started when the hub was not there: no "never awaited" warning


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"bad environment setting {item!r} (expected NAME=VALUE)", "--env")
        env[name] = value
    return env


def command_from_args(args: argparse.Namespace, words: list[str]) -> Command:
    """The command's words: joined for /bin/sh like ssh does, or an argv with --argv."""
    if not words:
        raise ConfigError("no command given (put it after TARGETS and shoal's options)", "command")
    common = dict(env=parse_env(args.env), cwd=args.cwd, timeout=args.timeout,
                  detach=args.detach, kill_grace=args.kill_grace, idle_timeout=args.idle_timeout,
                  user=getattr(args, "user", None), pty=getattr(args, "pty", False))
    if args.argv:
        return Command(argv=list(words), **common)
    return Command(shell=" ".join(words), **common)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config and --color, which every subcommand takes."""
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="PATH",
                   help="controller defaults (TOML; default $XDG_CONFIG_HOME/shoal/config.toml if it exists)")
    g.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour output: auto (default) only on a terminal and without NO_COLOR; "
                        "always even with NO_COLOR")


def with_user_config(parser: argparse.ArgumentParser, sub: argparse.ArgumentParser,
                     opts: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """Parse again with the config file's values as the subcommand's defaults, so flags win.

    A value the subcommand's option does not accept (`output = "json"` for the shell,
    which has no JSON mode) leaves that subcommand's own default.
    """
    from shoal.controller.userconfig import load_user_config

    config = load_user_config(args.config)
    if not config.defaults:
        return args
    defaults = {action.dest: config.defaults[action.dest] for action in sub._actions
                if action.dest in config.defaults
                and (action.choices is None or config.defaults[action.dest] in action.choices)}
    sub.set_defaults(**defaults)
    return parser.parse_known_args(opts)[0]


def color_from_args(args: argparse.Namespace) -> bool | None:
    """--color as Display takes it: True, False, or None to decide from the terminal."""
    return {"always": True, "never": False}.get(getattr(args, "color", "auto"))

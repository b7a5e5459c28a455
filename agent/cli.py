"""`shoal-agent`: run an agent until SIGTERM.

Exit statuses: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad option,
configuration or key file, or an address that cannot be bound.
--check-config exits 0 when the agent would start with these settings, 2 when not:
it also loads every key file and the TLS files, as a start does, and prints one
line per file it could not use (`path:line: option: file: reason`).
SIGHUP re-reads the configuration file, key files and TLS files without dropping
sessions; discovery starts, stops or moves with it. A reload that fails changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import signal
import sys

from shoal.protocol.errors import ConfigError, ShoalError

from shoal.agent.accept import raise_nofile_limit
from shoal.agent.config import AgentConfig, Limits, TlsConfig, load_config
from shoal.agent.log import setup_logging
from shoal.hostio.sdnotify import notify
from shoal.agent.server import Agent
from shoal.agent.strictmodes import check_path
from shoal.hostio.version import VersionAction

__all__ = ["main", "build_parser"]

log = logging.getLogger("shoal.agent")
DEFAULT_CONFIG = "/etc/shoal/agent.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal-agent", description="Run shoal commands on this host for controllers.")
    p.add_argument("--version", action=VersionAction)
    p.add_argument("--config", metavar="PATH", help=f"agent configuration (TOML; default {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    p.add_argument("--listen", action="append", metavar="ADDR",
                   help="HOST:PORT, [IPv6]:PORT or unix:/path; repeatable (default 127.0.0.1:8470)")
    p.add_argument("--connect", action="append", metavar="HUB[:PORT]",
                   help="dial this hub and stay connected, reconnecting with backoff (repeatable; "
                        "port default 8472); no listener is opened unless --listen is given too")
    p.add_argument("--name", metavar="NAME", help="the name announced to hubs (default: this host's name)")
    p.add_argument("--key-file", action="append", metavar="PATH",
                   help="accept controllers holding this key, with full rights (repeatable)")
    p.add_argument("--insecure", action="store_true", help="allow listening beyond loopback without a key")
    p.add_argument("--tls-cert", metavar="PATH", help="this agent's certificate (mutual TLS), on every TCP "
                   "listener and on the connections to --connect hubs")
    p.add_argument("--tls-key", metavar="PATH", help="private key of --tls-cert")
    p.add_argument("--tls-ca", metavar="PATH", help="CA for controller (and hub) certificates")
    p.add_argument("--audit-log", metavar="PATH", help="append one JSON line per security event")
    p.add_argument("--audit-required", action="store_true",
                   help="refuse commands while the audit log cannot be written (default: run them and warn)")
    p.add_argument("--state-dir", metavar="DIR")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--discovery", action="store_true", help="answer `shoal discover` probes over UDP")
    p.add_argument("--discovery-port", type=int, metavar="PORT", help="UDP port for discovery (default 8470)")
    p.add_argument("--discovery-name", metavar="NAME", help="name given in discovery replies (default: hostname)")
    p.add_argument("--discovery-group", metavar="ADDR",
                   help="IPv4 multicast group joined when listening beyond loopback (default 239.255.84.70)")
    p.add_argument("--discovery-group6", metavar="ADDR",
                   help="IPv6 group joined on every interface when listening beyond IPv6 loopback "
                   "(default ff02::8470:8470)")
    _add_limit_options(p)
    return p


def _add_limit_options(parser: argparse.ArgumentParser) -> None:
    """One flag per [limits] option, same name with dashes, so none is file-only."""
    group = parser.add_argument_group("limits (each overrides the same option in [limits])")
    defaults = Limits()
    for option in dataclasses.fields(Limits):
        default = getattr(defaults, option.name)
        kind = type(default)
        unit = "SECS" if kind is float else "BYTES" if option.name.endswith(("_size", "_window")) else "N"
        group.add_argument("--" + option.name.replace("_", "-"), type=kind, metavar=unit,
                           help=f"default {default:g}" if kind is float else f"default {default}")


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The config file (if any) with command-line options on top."""

    path = _config_path(args)
    if path:
        check_path(path, "configuration file")
    cfg = load_config(path) if path else AgentConfig.default()
    overrides: dict[str, object] = {}
    limits = [(option.name, f"limits.{option.name}") for option in dataclasses.fields(Limits)]
    for name, dotted in [("listen", "listen"), ("connect", "connect"), ("name", "name"), ("audit_log", "audit_log"), ("state_dir", "state_dir"),
                         ("log_level", "log_level"), *limits]:
        value = getattr(args, name)
        if value is not None and name in ("audit_log", "state_dir"):
            value = os.path.abspath(value)
        if value is not None:
            overrides[dotted] = tuple(value) if isinstance(value, list) else value
    if args.insecure:
        overrides["insecure"] = True
    if args.audit_required:
        overrides["audit_required"] = True
    if args.discovery:
        overrides["discovery.enabled"] = True
    for option in ("port", "name", "group", "group6"):
        if getattr(args, f"discovery_{option}") is not None:
            overrides[f"discovery.{option}"] = getattr(args, f"discovery_{option}")
    if args.audit_log:
        overrides["audit_log"] = os.path.abspath(args.audit_log)
    overrides.update(_tls_overrides(args, cfg))
    if args.connect and args.listen is None and not _file_sets_listen(path):
        overrides["listen"] = ()  # dialling out: no listener unless one is asked for
    try:
        return cfg.replace_from_cli(**overrides) if overrides else cfg
    except ConfigError as exc:
        raise ConfigError(exc.reason, _flag_for(exc.where)) from None


def _file_sets_listen(path: str | None) -> bool:
    """Whether the configuration file names listen addresses itself (it was read already)."""
    if not path:
        return False
    import tomllib

    try:
        with open(path, "rb") as stream:
            return "listen" in tomllib.load(stream)
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _config_path(args: argparse.Namespace) -> str | None:
    """--config, else the default file when it exists, else None (built-in settings)."""
    return args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)


def _flag_for(where: str | None) -> str | None:
    """Name the flag (`--max-frame-size`) behind an option (`limits.max_frame_size`) if there is one."""
    if not where:
        return where
    name = re.sub(r"\[\d+\]", "", where).removeprefix("limits.")
    flag = "--" + name.replace(".", "-").replace("_", "-")
    return flag if flag in build_parser()._option_string_actions else where


def _tls_overrides(args: argparse.Namespace, cfg: AgentConfig) -> dict[str, object]:
    """`--tls-*` files (made absolute): all three, or some on top of the config's [tls]."""

    given = {name: os.path.abspath(getattr(args, f"tls_{name}"))
             for name in ("cert", "key", "ca") if getattr(args, f"tls_{name}")}
    if not given:
        return {}
    if len(given) == 3:
        return {"tls": TlsConfig(**given)}
    if cfg.tls is None:
        raise ConfigError("--tls-cert, --tls-key and --tls-ca go together", "tls")
    return {f"tls.{name}": path for name, path in given.items()}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.check_config:
            return _check_config(args, cfg)
        setup_logging(cfg.log_level)
        return asyncio.run(_serve(args, cfg))
    except ConfigError as exc:
        print(f"shoal-agent: {exc}", file=sys.stderr)
        return 2
    except ShoalError as exc:
        print(f"shoal-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _check_config(args: argparse.Namespace, cfg: AgentConfig) -> int:
    """The settings are valid; now open the files they name, as a start would."""
    from shoal.agent.keys import check_exposure
    from shoal.agent.preflight import file_problems

    tls_flags = [name for name in ("cert", "key", "ca") if getattr(args, f"tls_{name}")]
    problems = file_problems(cfg, _config_path(args), key_files=args.key_file or [], tls_flags=tls_flags)
    for problem in problems:
        print(f"shoal-agent: {problem}", file=sys.stderr)
    if problems:
        return 2
    check_exposure(cfg, keyed=bool(cfg.keys or args.key_file))  # as KeyTable.load at start: unkeyed beyond loopback
    print(f"configuration ok: {_config_path(args) or 'built-in defaults (no ' + DEFAULT_CONFIG + ')'}")
    return 0


def _extra_keys(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    from shoal.hostio.keyfile import load_key_file

    for path in args.key_file or []:
        check_path(path, "key file")
    return [load_key_file(p) for p in args.key_file or []]


async def _serve(args: argparse.Namespace, cfg: AgentConfig) -> int:
    agent = Agent(cfg, keys=_extra_keys(args), reap_orphans=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Handlers go in before the first listener exists: anyone who sees the agent
    # listening may signal it, and a default SIGTERM would skip the shutdown.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload_asked = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    raise_nofile_limit(cfg.limits.max_connections)
    await agent.start()
    if not agent.keys.required and cfg.insecure:
        log.warning("running WITHOUT authentication on a non-loopback address (--insecure)")
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(agent, args))
    if reload_asked.is_set():
        _reload(agent, args)  # a SIGHUP that came while starting still counts
    # Only now: systemd may send SIGTERM the moment it hears READY. STATUS shows in
    # `systemctl status`, with the real ports when the config asked for port 0.
    notify("READY=1\nSTATUS=" + _status(agent))
    await stop.wait()
    notify("STOPPING=1")
    log.info("shutting down: waiting up to %gs for running commands", cfg.limits.kill_grace)
    await agent.close(grace=cfg.limits.kill_grace)
    return 0


def _status(agent: Agent) -> str:
    """What `systemctl status` shows: where the agent listens and which hubs it dials."""
    parts = [f"listening on {', '.join(agent.addresses)}"] if agent.addresses else []
    if agent.dialers:
        parts.append(f"dialling {', '.join(d.address for d in agent.dialers)}")
    return "; ".join(parts)


def _reload(agent: Agent, args: argparse.Namespace) -> None:
    """SIGHUP: re-read config, keys and TLS files; existing sessions keep their state."""
    try:
        agent.reload(config_from_args(args), _extra_keys(args))
        log.info("configuration reloaded")
    except ShoalError as exc:
        log.error("reload failed, keeping the old configuration: %s", exc)


if __name__ == "__main__":
    sys.exit(main())

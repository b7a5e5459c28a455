"""`shoal-agent`: run an agent until SIGTERM.

Exit statuses: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a bad option,
configuration or key file, or an address that cannot be bound.
SIGHUP re-reads the configuration file and key files without dropping sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from protocol.errors import ConfigError, ShoalError

from .config import AgentConfig, TlsConfig, load_config
from .log import setup_logging
from .sdnotify import notify
from .server import Agent

__all__ = ["main", "build_parser"]

log = logging.getLogger("shoal.agent")
DEFAULT_CONFIG = "/etc/shoal/agent.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal-agent", description="Run shoal commands on this host for controllers.")
    p.add_argument("--config", metavar="PATH", help=f"agent configuration (TOML; default {DEFAULT_CONFIG} if it exists)")
    p.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    p.add_argument("--listen", action="append", metavar="ADDR",
                   help="HOST:PORT, [IPv6]:PORT or unix:/path; repeatable (default 127.0.0.1:8470)")
    p.add_argument("--key-file", action="append", metavar="PATH",
                   help="accept controllers holding this key, with full rights (repeatable)")
    p.add_argument("--insecure", action="store_true", help="allow listening beyond loopback without a key")
    p.add_argument("--tls-cert", metavar="PATH")
    p.add_argument("--tls-key", metavar="PATH")
    p.add_argument("--tls-ca", metavar="PATH", help="CA for controller certificates (mutual TLS)")
    p.add_argument("--audit-log", metavar="PATH", help="append one JSON line per security event")
    p.add_argument("--state-dir", metavar="DIR")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--discovery", action="store_true", help="answer `shoal discover` probes over UDP")
    p.add_argument("--discovery-port", type=int, metavar="PORT", help="UDP port for discovery (default 8470)")
    p.add_argument("--max-connections", type=int, metavar="N")
    p.add_argument("--max-commands", type=int, metavar="N")
    p.add_argument("--idle-timeout", type=float, metavar="SECS")
    p.add_argument("--kill-grace", type=float, metavar="SECS")
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The config file (if any) with command-line options on top."""

    path = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    cfg = load_config(path) if path else AgentConfig.default()
    overrides: dict[str, object] = {}
    for name, dotted in (("listen", "listen"), ("audit_log", "audit_log"), ("state_dir", "state_dir"),
                         ("log_level", "log_level"), ("max_connections", "limits.max_connections"),
                         ("max_commands", "limits.max_commands"), ("idle_timeout", "limits.idle_timeout"),
                         ("kill_grace", "limits.kill_grace")):
        value = getattr(args, name)
        if value is not None and name in ("audit_log", "state_dir"):
            value = os.path.abspath(value)
        if value is not None:
            overrides[dotted] = tuple(value) if isinstance(value, list) else value
    if args.insecure:
        overrides["insecure"] = True
    if args.discovery:
        overrides["discovery.enabled"] = True
    if args.discovery_port is not None:
        overrides["discovery.port"] = args.discovery_port
    if args.audit_log:
        overrides["audit_log"] = os.path.abspath(args.audit_log)
    overrides.update(_tls_overrides(args, cfg))
    return cfg.replace_from_cli(**overrides) if overrides else cfg


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
            print("configuration ok")
            return 0
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


def _extra_keys(args: argparse.Namespace) -> list:  # type: ignore[type-arg]
    from .keyfile import load_key_file

    return [load_key_file(p) for p in args.key_file or []]


async def _serve(args: argparse.Namespace, cfg: AgentConfig) -> int:
    agent = Agent(cfg, keys=_extra_keys(args), reap_orphans=True)
    await agent.start()
    if not agent.keys.required and cfg.insecure:
        log.warning("running WITHOUT authentication on a non-loopback address (--insecure)")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(agent, args))
    # Only now: systemd may send SIGTERM the moment it hears READY.
    notify("READY=1")
    await stop.wait()
    notify("STOPPING=1")
    log.info("shutting down: waiting up to %gs for running commands", cfg.limits.kill_grace)
    await agent.close(grace=cfg.limits.kill_grace)
    return 0


def _reload(agent: Agent, args: argparse.Namespace) -> None:
    """SIGHUP: re-read config and keys; existing sessions keep their state."""
    try:
        cfg = config_from_args(args)
        agent.config = cfg
        agent.load_keys(_extra_keys(args))
        log.info("configuration reloaded")
    except ShoalError as exc:
        log.error("reload failed, keeping the old configuration: %s", exc)


if __name__ == "__main__":
    sys.exit(main())

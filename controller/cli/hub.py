"""`shoal hub`: a resident controller that keeps the fleet's connections warm.

    shoal hub --socket PATH [--listen ADDR]... [--key-file PATH] [--targets PATTERN]
              [--metrics-listen [HOST:]PORT] [--hub-config hub.toml]

Agents started with `shoal-agent --connect HUB` dial in on each --listen address
(default port 8472) and are known by the name they announce; --targets names
inventory hosts the hub connects to itself and keeps connected. Local clients
(`shoal run --hub PATH ...`, any subcommand that reaches hosts) use the Unix
socket, mode 0600 and only for the hub's own uid. With --tls-cert, --tls-key and
--tls-ca, agents dial in over TLS, the hub as the TLS client, and must hold a
certificate from that CA naming the name they claim. --metrics-listen serves every
agent's metrics for Prometheus at /metrics. Settings may come from --hub-config
(flags win). SIGTERM or SIGINT drains: no new clients or agents, requests in
flight get --drain-grace seconds, then the hub exits 0. Under systemd
(NOTIFY_SOCKET set, `Type=notify`) the hub reports READY=1 once its socket
serves and its listeners are bound, and STOPPING=1 as it drains.

SIGHUP reads the key file and the TLS files again (the paths given at start):
agents that dial in, and inventory targets that reconnect, from then on must
match the new ones, while connections already up keep their sessions. A file
that cannot be used (missing, unreadable, open to others, malformed) is logged
in one line and the hub keeps the files it had. Everything else (the socket,
--listen, --metrics-listen, --targets and the inventory, hub.toml itself) is
read at start only: change it with a restart.

Exit status: 0 after SIGTERM/SIGINT; 2 for a bad option, configuration, key file
or an address that cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
from typing import Any

from shoal.protocol.defaults import HUB_PORT
from shoal.protocol.errors import ConfigError
from shoal.protocol.handshake import SharedKey
from shoal.hostio.neterrors import bind_reason
from shoal.hostio.sdnotify import notify

from shoal.controller.cli.options import connect_options_from_args, targets_from_args
from shoal.controller.fleet import ConnectOptions
from shoal.controller.hub.config import load_hub_config, parse_address
from shoal.controller.hub.registry import FORGET_AFTER
from shoal.controller.hub.server import Hub, HubSettings
from shoal.controller.term.display import Display

__all__ = ["add_arguments", "run", "default_socket"]

log = logging.getLogger("shoal.hub")


def default_socket() -> str:
    """Where the hub's socket is when none is named: the user's runtime dir, else /run/shoal."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "shoal", "hub.sock") if runtime and os.geteuid() != 0 else "/run/shoal/hub.sock"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub-config", metavar="PATH", help="hub settings (TOML); flags win")
    parser.add_argument("--socket", metavar="PATH", help=f"local clients' Unix socket (default {default_socket()})")
    parser.add_argument("--listen", action="append", metavar="ADDR",
                        help=f"where agents dial in: HOST[:PORT] (port default {HUB_PORT}); repeatable; "
                             "without it (and no listen in --hub-config) no agent can dial in")
    parser.add_argument("--key-file", metavar="PATH",
                        help="the fleet's key: dialling agents must prove it, and the hub proves it to them "
                             "(read again on SIGHUP)")
    parser.add_argument("--tls-cert", metavar="PATH",
                        help="the hub's certificate (mutual TLS): for the inventory targets kept warm and, "
                             "on every --listen address, for agents dialling in (the TLS files are read "
                             "again on SIGHUP)")
    parser.add_argument("--tls-key", metavar="PATH", help="private key of --tls-cert")
    parser.add_argument("--tls-ca", metavar="PATH", help="CA that signed the agents' certificates")
    parser.add_argument("--targets", metavar="PATTERN", help="inventory hosts to connect to and keep connected")
    parser.add_argument("-x", "--exclude", metavar="PATTERN", help="hosts to leave out of --targets")
    parser.add_argument("--inventory", metavar="PATH", help="inventory TOML for --targets")
    parser.add_argument("--metrics-listen", metavar="[HOST:]PORT",
                        help="serve every agent's metrics for Prometheus at http://HOST:PORT/metrics "
                             "(host default 127.0.0.1)")
    parser.add_argument("--audit-log", metavar="PATH", help="append one JSON line per security event")
    parser.add_argument("--connect-timeout", type=float, metavar="SECS",
                        help="per inventory target connect and handshake (default 10)")
    parser.add_argument("-f", "--fanout", type=int, metavar="N", help="inventory connects in flight (default 64)")
    parser.add_argument("--drain-grace", type=float, metavar="SECS",
                        help="on SIGTERM, how long requests in flight may finish (default 10)")
    parser.add_argument("--forget-after", type=float, metavar="SECS",
                        help="how long a dial-in agent that left stays in the /metrics scrape as shoal_up 0 "
                             f"(default {FORGET_AFTER:g}, a day; 0: not at all; a restart forgets them too)")
    parser.add_argument("--insecure", action="store_true", help="allow --listen beyond loopback without a key")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


_DEFAULTS: dict[str, Any] = {"connect_timeout": 10.0, "fanout": 64, "drain_grace": 10.0, "log_level": "info",
                             "listen": [], "insecure": False,
                             "forget_after": FORGET_AFTER}


def _settled(args: argparse.Namespace) -> argparse.Namespace:
    """Flags over hub.toml over built-in defaults."""
    file = load_hub_config(args.hub_config) if args.hub_config else {}
    for name in ("socket", "listen", "key_file", "tls_cert", "tls_key", "tls_ca", "targets", "inventory",
                 "metrics_listen", "audit_log", "connect_timeout", "fanout", "drain_grace", "log_level",
                 "forget_after"):
        if getattr(args, name) is None:
            setattr(args, name, file.get(name, _DEFAULTS.get(name)))
    args.insecure = args.insecure or file.get("insecure", False)
    args.socket = args.socket or default_socket()
    args.yes = True
    return args


def settings_from_args(args: argparse.Namespace) -> HubSettings:
    """The hub's settings from parsed (and settled) options."""
    if args.fanout < 1:
        raise ConfigError(f"must be 1 or more, not {args.fanout}", "--fanout")
    if not args.connect_timeout > 0:  # NaN too
        raise ConfigError(f"must be above 0, not {args.connect_timeout:g}", "--connect-timeout")
    if not args.drain_grace >= 0:
        raise ConfigError(f"must be 0 or more, not {args.drain_grace:g}", "--drain-grace")
    if not args.forget_after >= 0:
        raise ConfigError(f"must be 0 or more, not {args.forget_after:g}", "--forget-after")
    listen = []
    for text in args.listen:
        try:
            listen.append(parse_address(text, HUB_PORT))
        except (ConfigError, ValueError) as exc:
            raise ConfigError(getattr(exc, "reason", str(exc)), "--listen") from None
    metrics = None
    if args.metrics_listen:
        try:
            metrics = parse_address(args.metrics_listen, None)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(getattr(exc, "reason", str(exc)), "--metrics-listen") from None
    targets = tuple(targets_from_args(args)) if args.targets else ()
    directory = os.path.dirname(args.socket) or "."
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:  # the user's path, not a bug: one line and 2, as for a socket that cannot be bound
        raise ConfigError(f"cannot listen on unix:{args.socket}: cannot create {exc.filename or directory}: "
                          f"{bind_reason(exc)}", "--socket") from None
    key, connect, tls = credentials_from_args(args)
    return HubSettings(
        socket=args.socket, listen=tuple(listen), key=key, targets=targets, connect=connect, metrics=metrics,
        audit_log=args.audit_log, drain_grace=args.drain_grace, fanout=args.fanout, insecure=args.insecure, tls=tls,
        forget_after=args.forget_after)


def credentials_from_args(args: argparse.Namespace) -> tuple[SharedKey | None, ConnectOptions, ssl.SSLContext | None]:
    """The key file and the TLS files read, checked and built: at start, and again on SIGHUP.

    Raises:
        ConfigError: a file is missing, unreadable, open to others or not what it should be.
    """
    from shoal.hostio.keyfile import load_key_file

    key = load_key_file(os.path.expanduser(args.key_file)) if args.key_file else None
    return key, connect_options_from_args(args), _dialin_tls(args)


def _dialin_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The dial-in listeners' TLS, from the same files as the inventory's (checked together there)."""
    if not (args.tls_cert and args.tls_key and args.tls_ca):
        return None
    from shoal.hostio.tls import dialin_context

    return dialin_context(*(os.path.expanduser(path) for path in (args.tls_cert, args.tls_key, args.tls_ca)))


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "hub")
    args = _settled(args)
    settings = settings_from_args(args)
    _setup_logging(args.log_level)
    return asyncio.run(_serve(settings, args))


async def _serve(settings: HubSettings, args: argparse.Namespace) -> int:
    hub = Hub(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before the socket exists: whoever sees it may signal the hub, and a default
    # SIGTERM would skip the drain, a default SIGHUP kill it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reload_asked = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    await hub.start()
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(hub, args))
    if reload_asked.is_set():
        _reload(hub, args)  # a SIGHUP that came while starting still counts
    # Only now, with the socket accepting and the listeners bound: `systemctl start`
    # returns on READY=1, and a client started next must find the hub serving.
    notify("READY=1\nSTATUS=" + _status(hub))
    await stop.wait()
    notify("STOPPING=1")
    log.info("draining: up to %gs for requests in flight", settings.drain_grace)
    await hub.close()
    log.info("stopped")  # the journal's last word: the drain finished and nothing is left open
    return 0


def _status(hub: Hub) -> str:
    """What `systemctl status` shows: the socket, where agents dial in, the metrics endpoint,
    the inventory kept warm."""
    parts = [f"serving {hub.settings.socket}"]
    if hub.dialins.addresses:
        parts.append(f"agents dial in at {', '.join(hub.dialins.addresses)}{' (TLS)' if hub.settings.tls else ''}")
    if hub.metrics_address:
        parts.append(f"metrics at http://{hub.metrics_address}/metrics")
    if hub.settings.targets:
        count = len(hub.settings.targets)
        parts.append(f"{count} inventory target{'s' if count != 1 else ''} kept warm")
    return "; ".join(parts)


def _reload(hub: Hub, args: argparse.Namespace) -> None:
    """SIGHUP: read the key and TLS files again; a file that fails leaves everything as it was."""
    try:
        key, connect, tls = credentials_from_args(args)
        for target in hub.settings.targets:  # the inventory's own key and TLS files too: all or nothing
            connect.key_of(target)
            connect.ssl_of(target)
    except ConfigError as exc:
        log.error("reload failed, keeping the key and TLS files read before: %s", exc)
        return
    except Exception as exc:  # a bug: one line here too (traceback at debug), and the hub serves on
        log.error("reload failed (internal error: %s: %s), keeping the key and TLS files read before",
                  type(exc).__name__, exc)
        log.debug("reload failure", exc_info=True)
        return
    hub.use_credentials(key=key, tls=tls, connect=connect)
    log.info("reloaded the key and TLS files: agents that dial in (and inventory targets that "
             "reconnect) from now on use them; connections already up keep their sessions")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("shoal")
    root.addHandler(handler)
    root.setLevel(level.upper())

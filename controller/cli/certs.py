"""Create a private CA and the certificates for mutual TLS between shoal and its agents.

    shoal certs init DIR [--agent-name NAME ...] [--controller-name NAME] [--days N]

Writes ca.pem, ca.key, agent.pem, agent.key, controller.pem and controller.key into
DIR (created 0700; private keys 0600; nothing existing is overwritten). Give every
host name and IP address the agents are reached by with --agent-name: the controller
checks the agent's certificate against the name in the target. localhost, 127.0.0.1
and ::1 are always included. Keep ca.key offline once the certificates are issued.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shoal.controller.term.display import Display

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("init",), help="init: create the CA and both certificates")
    parser.add_argument("directory", metavar="DIR", help="where to write the files")
    parser.add_argument("--agent-name", action="append", default=[], metavar="NAME",
                        help="host name or IP address the agents are reached by (repeatable; "
                             "comma-separated lists allowed)")
    parser.add_argument("--controller-name", default="shoal-controller", metavar="NAME",
                        help="common name of the controller certificate (default shoal-controller)")
    parser.add_argument("--days", type=int, default=825, metavar="N",
                        help="validity of every certificate in days (default 825)")


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    from shoal.controller.pki import init_pki

    names = [name.strip() for item in args.agent_name for name in item.split(",") if name.strip()]
    paths = init_pki(args.directory, names, controller_name=args.controller_name, days=args.days)
    for path in paths.values():
        display.print(str(path))
    display.message(_usage(paths))
    return 0


def _usage(paths: dict[str, Path]) -> str:
    """How to use what was written: which files go where, and the flags for each side."""
    return "\n".join([
        "shoal: copy ca.pem, agent.pem and agent.key to every agent and start it with:",
        f"  shoal-agent --tls-cert {paths['agent_cert']} --tls-key {paths['agent_key']} "
        f"--tls-ca {paths['ca_cert']} ...",
        "shoal: and run the controller with:",
        f"  shoal run --tls-cert {paths['controller_cert']} --tls-key {paths['controller_key']} "
        f"--tls-ca {paths['ca_cert']} TARGETS -- COMMAND",
        f"shoal: keep {paths['ca_key']} away from the agents; it can issue certificates they trust.",
    ])

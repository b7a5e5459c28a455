"""Install the shoal agent on hosts over the ssh access they already have.

    shoal bootstrap TARGETS --key-file PATH [--tls-ca-dir DIR [--tls-name NAME]...]
                    [--ssh-user USER] [--ssh-option OPT]... [--dry-run]

One ssh session per host carries shoal (--source DIR, else the checkout this
shoal runs from, else this installed shoal as a wheel) and the key file on its
stdin, and runs deploy/install.sh
from a private temporary directory that is removed afterwards: a virtualenv in
/opt/shoal, /etc/shoal/agent.toml (an existing one is kept), the key as
/etc/shoal/admin.key (0600), and the systemd unit, enabled and started. Run it
again to upgrade: the service is restarted on the new version.

The remote command is POSIX shell and needs root: log in as root, or use --sudo
with a user allowed to run sudo without a password. ssh runs in batch mode (no
password or host key prompts) with a 10 s connect timeout; --ssh-option can
override both (e.g. --ssh-option ConnectTimeout=30).

With --tls-ca-dir DIR (a `shoal certs init` directory) every host is enrolled for
mutual TLS as well: this controller issues the host a certificate of its own
(valid for the host name or IP address as given in TARGETS, plus every --tls-name)
with a new key, and the install puts it in /etc/shoal as agent.pem, agent.key
(0600, root's) and ca.pem, and names them in agent.toml's [tls] (added to an
existing agent.toml that has none), so the agent starts with TLS. DIR/ca.key
signs here and is never sent. Connect with DIR's controller certificate:
--tls-cert DIR/controller.pem --tls-key DIR/controller.key --tls-ca DIR/ca.pem.
A host whose name cannot be in a certificate is reported (not enrolled, status 2)
and the others go on.

Exit status: 0 every host installed; otherwise the largest host status (the
remote install's exit status; 255 for a host ssh could not reach or log in to);
2 bad usage, target, key file, CA directory or source tree (or a host name no
certificate can hold).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import time

from shoal.protocol.errors import ConfigError

from shoal.controller.bootstrap import (
    BUNDLE_NAME,
    Bootstrap,
    Bundle,
    HostReport,
    Source,
    bootstrap_hosts,
    bundle_head,
    bundle_tail,
    find_source,
    key_file_checked,
    ssh_host,
    tls_files,
)
from shoal.controller.term.display import Display
from shoal.controller.escape import escape_line
from shoal.controller.cli.options import add_target_options, targets_from_args
from shoal.controller.pki import CertificateAuthority, load_ca
from shoal.controller.result import fleet_status
from shoal.controller.term.summary import summary_line

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    ssh = parser.add_argument_group("ssh")
    ssh.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                     help="passed to ssh as -o OPT, e.g. Port=2222 (repeatable)")
    ssh.add_argument("--ssh-user", metavar="USER", help="log in as USER (default: ssh's choice)")
    ssh.add_argument("--sudo", action="store_true", help="run the install through sudo -n (non-root login)")
    # Own dests: the config file's fanout and key_file are for agents, not for ssh installs.
    ssh.add_argument("-f", "--fanout", dest="ssh_fanout", type=int, default=16, metavar="N",
                     help="hosts installing at once (default 16)")
    install = parser.add_argument_group("install")
    install.add_argument("--key-file", dest="install_key", metavar="PATH",
                         help="shared key installed as /etc/shoal/admin.key (0600) on every host")
    install.add_argument("--source", metavar="DIR", help="shoal source tree to install (default: this checkout, or this installed shoal)")
    install.add_argument("--prefix", metavar="DIR", help="virtualenv location on the hosts (default /opt/shoal)")
    install.add_argument("--destdir", metavar="DIR",
                         help="stage every file under DIR on the hosts and leave systemd alone")
    install.add_argument("--system-site-packages", action="store_true",
                         help="let the virtualenv use the hosts' psutil and cryptography packages")
    install.add_argument("--no-systemd", action="store_true", help="install the unit but do not start it")
    tls = parser.add_argument_group("tls")
    tls.add_argument("--tls-ca-dir", metavar="DIR",
                     help="`shoal certs init` directory: issue each host a certificate and enable mutual TLS")
    tls.add_argument("--tls-name", action="append", default=[], metavar="NAME",
                     help="extra host name or IP address in every host's certificate (repeatable; "
                          "comma-separated lists allowed)")
    parser.add_argument("--dry-run", action="store_true", help="print the ssh commands instead of running them")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary; errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="show each host's install output")


def _install_flags(args: argparse.Namespace) -> tuple[str, ...]:
    flags: list[str] = []
    for option in ("prefix", "destdir"):
        if getattr(args, option):
            flags += [f"--{option}", getattr(args, option)]
    flags += ["--system-site-packages"] if args.system_site_packages else []
    flags += ["--no-systemd"] if args.no_systemd else []
    return tuple(flags)


def _hosts(args: argparse.Namespace) -> list[str]:
    """ssh addresses of the targets, each once (a typed agent port does not matter here)."""
    hosts = [ssh_host(target.name, target.host) for target in targets_from_args(args)]
    return list(dict.fromkeys(hosts))


def _plan(args: argparse.Namespace, source: Source) -> Bootstrap:
    if args.ssh_fanout < 1:
        raise ConfigError(f"fanout must be at least 1, got {args.ssh_fanout}", "--fanout")
    if args.tls_name and not args.tls_ca_dir:
        raise ConfigError("--tls-name needs --tls-ca-dir", "--tls-name")
    return Bootstrap(ssh_options=tuple(args.ssh_option), ssh_user=args.ssh_user,
                     key_file=key_file_checked(args.install_key), install_flags=_install_flags(args),
                     sudo=args.sudo, tls=args.tls_ca_dir is not None, install_from=source.install_from)


def _bundle(args: argparse.Namespace, plan: Bootstrap, source: Source) -> Bundle:
    """Each host's stdin: the shared source part, then its own certificate when enrolling for TLS."""
    head = bundle_head(source, plan.key_file)
    ca = _ca(args)
    if ca is None:
        whole = head + bundle_tail({})
        return lambda host: whole
    extra = _tls_names(args)
    return lambda host: head + bundle_tail(tls_files(ca, [host, *extra]))


def _ca(args: argparse.Namespace) -> CertificateAuthority | None:
    return load_ca(os.path.expanduser(args.tls_ca_dir)) if args.tls_ca_dir else None


def _tls_names(args: argparse.Namespace) -> list[str]:
    return [name.strip() for item in args.tls_name for name in item.split(",") if name.strip()]


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "bootstrap")
    hosts = _hosts(args)
    source = find_source(args.source)
    plan = _plan(args, source)
    if plan.key_file is None:
        display.warning("no --key-file: a host without /etc/shoal/admin.key gets a new key of its own, "
                        "which this controller does not hold")
    if args.dry_run:
        key = f" and {plan.key_file} as admin.key" if plan.key_file else ""
        ca = _ca(args)
        tls = f", a certificate for the host from {ca.where / 'ca.pem'}" if ca else ""
        display.message(f"shoal: dry run: each command reads {BUNDLE_NAME} (the source in {source.where}{key}{tls}) "
                        "on stdin")
        for host in hosts:
            display.print(f"{shlex.join(plan.ssh_argv(host))} < {BUNDLE_NAME}")
        return 0
    if shutil.which(plan.ssh) is None:
        raise ConfigError("no ssh program found on PATH", "ssh")
    return _install(plan, hosts, _bundle(args, plan, source), args.ssh_fanout, display)


def _install(plan: Bootstrap, hosts: list[str], bundle: Bundle, fanout: int, display: Display) -> int:
    started = time.monotonic()

    def report(host_report: HostReport) -> None:
        if display.verbosity >= 2:
            for line in (host_report.stdout + host_report.stderr).splitlines():
                display.err(escape_line(f"{host_report.result.host}: {line}".encode("utf-8", "replace")))
        display.print(host_report.line)

    reports = asyncio.run(bootstrap_hosts(plan, hosts, bundle, fanout, report))
    results = [r.result for r in reports]
    display.message(summary_line(results, time.monotonic() - started))
    return fleet_status(results)

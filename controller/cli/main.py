"""`shoal`: a thin command line over the controller library.

Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args, words, display) -> int`; this module only parses, dispatches, and maps
errors to exit statuses:

    0     success (every host exited 0)
    1-254 the largest exit status among the hosts (128+N: killed by signal N)
    255   a host was unreachable, failed authentication, timed out or was lost
    2     bad usage, configuration, inventory, key file or target pattern
    70    internal error: a bug in shoal (one line on stderr; the traceback goes to
          the file named by SHOAL_DEBUG_LOG, if set)
    130   interrupted (Ctrl-C)
    141   our stdout was closed early (`| head`): remote commands cancelled, no message
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from types import ModuleType

from shoal.protocol.errors import AuthError, ConfigError, ShoalConnectionError, ShoalError

from shoal.controller.debuglog import DEBUG_LOG_ENV, setup_debug_log
from shoal.controller.term.display import Display

__all__ = ["main", "SUBCOMMANDS", "EXIT_USAGE", "EXIT_UNREACHABLE", "EXIT_INTERRUPTED", "EXIT_SOFTWARE", "EXIT_BROKEN_PIPE"]

EXIT_USAGE = 2
EXIT_UNREACHABLE = 255
EXIT_INTERRUPTED = 130
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a writer killed by SIGPIPE

log = logging.getLogger("shoal.controller")

# Subcommand name -> (module under controller/, one-line help). Only the module of
# the subcommand being run is imported, which keeps `shoal run` quick to start.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("shoal.controller.cli.run", "run a command on many hosts"),
    "shell": ("shoal.controller.cli.shell", "interactive shell on many hosts at once"),
    "batch": ("shoal.controller.cli.batch", "run a file of commands on many hosts"),
    "put": ("shoal.controller.cli.put", "copy local files to many hosts"),
    "get": ("shoal.controller.cli.get", "fetch a file from many hosts into per-host directories"),
    "hosts": ("shoal.controller.cli.hosts", "show the hosts a target pattern expands to"),
    "metrics": ("shoal.controller.cli.metrics", "show host metrics (table, JSON or Prometheus)"),
    "top": ("shoal.controller.cli.top", "refresh a metrics table in place"),
    "check": ("shoal.controller.cli.check", "Nagios-style health check with alerting exit codes"),
    "ping": ("shoal.controller.cli.ping", "round-trip time, agent version and clock offset per host"),
    "discover": ("shoal.controller.cli.discover", "find agents on the network over UDP"),
    "keygen": ("shoal.controller.cli.keygen", "create a new shared key file"),
    "certs": ("shoal.controller.cli.certs", "create a small CA and TLS certificates"),
    "bootstrap": ("shoal.controller.cli.bootstrap", "install the agent on hosts over ssh"),
    "demo": ("shoal.controller.cli.demo", "try shoal on three local agents, no configuration needed"),
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's options are built."""
    parser = argparse.ArgumentParser(
        prog="shoal", description="Run commands on many hosts through shoal agents.",
        epilog="Exit status: 0 ok; otherwise the largest host status (128+N for signal N); "
               "255 unreachable/auth/timeout; 2 usage or configuration error; 70 internal error; "
               "130 interrupted; 141 stdout closed early (| head).")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == only:
            module = _load(name)
            p.description = module.__doc__
            p.formatter_class = argparse.RawDescriptionHelpFormatter
            module.add_arguments(p)
    return parser


def _subcommand_of(argv: list[str]) -> str | None:
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def split_words(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: options before, the remote command after."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Entry point of `shoal`; returns the exit status (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_debug_log()
    opts, words = split_words(argv)
    parser = build_parser(_subcommand_of(opts))
    args, extra = parser.parse_known_args(opts)
    words = extra + words
    if any(w.startswith("-") for w in extra):
        parser.error(f"unrecognized arguments: {' '.join(w for w in extra if w.startswith('-'))}")
    display = Display(verbosity=0 if getattr(args, "quiet", False) else 2 if getattr(args, "verbose", False) else 1)
    try:
        return int(_load(args.subcommand).run(args, words, display))
    except ConfigError as exc:
        display.error(str(exc))
        return EXIT_USAGE
    except (AuthError, ShoalConnectionError) as exc:
        display.error(str(exc))
        return EXIT_UNREACHABLE
    except ShoalError as exc:
        display.error(str(exc))
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line for the user, the traceback for the debug log
        log.exception("internal error in shoal %s", args.subcommand)
        display.error(f"internal error: {type(exc).__name__}: {exc} "
                      f"(a bug in shoal; set {DEBUG_LOG_ENV}=FILE for the traceback)")
        return EXIT_SOFTWARE


def _quiet_broken_pipe() -> None:
    """Our reader went away (`shoal ... | head`): exit without a traceback."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())

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
import os
import signal
import sys
from types import ModuleType
from typing import Any, NoReturn

from shoal.protocol.errors import AuthError, ConfigError, ShoalConnectionError, ShoalError

from shoal.controller.debuglog import DEBUG_LOG_ENV, setup_debug_log
from shoal.controller.cli.hubrun import run_through_hub
from shoal.controller.cli.options import add_config_options, color_from_args, with_user_config
from shoal.controller.cli.words import split_at_command
from shoal.controller.term.display import Display
from shoal.hostio.version import VersionAction

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
    "login": ("shoal.controller.cli.login", "interactive login shell on one host (like ssh HOST)"),
    "put": ("shoal.controller.cli.put", "copy local files to many hosts"),
    "get": ("shoal.controller.cli.get", "fetch a file from many hosts into per-host directories"),
    "hosts": ("shoal.controller.cli.hosts", "show the hosts a target pattern expands to"),
    "jobs": ("shoal.controller.cli.jobs", "list the detached jobs each agent keeps"),
    "attach": ("shoal.controller.cli.attach", "replay a job's output, then follow it to its end"),
    "kill": ("shoal.controller.cli.kill", "end a job's whole process tree"),
    "metrics": ("shoal.controller.cli.metrics", "show host metrics (table, JSON or Prometheus)"),
    "top": ("shoal.controller.cli.top", "refresh a metrics table in place"),
    "check": ("shoal.controller.cli.check", "Nagios-style health check with alerting exit codes"),
    "ping": ("shoal.controller.cli.ping", "round-trip time, agent version and clock offset per host"),
    "hub": ("shoal.controller.cli.hub", "a resident controller: agents dial in, clients reuse its connections"),
    "discover": ("shoal.controller.cli.discover", "find agents on the network over UDP"),
    "keygen": ("shoal.controller.cli.keygen", "create a new shared key file"),
    "certs": ("shoal.controller.cli.certs", "create a small CA and TLS certificates"),
    "bootstrap": ("shoal.controller.cli.bootstrap", "install the agent on hosts over ssh"),
    "demo": ("shoal.controller.cli.demo", "try shoal on three local agents, no configuration needed"),
    "completion": ("shoal.controller.cli.completion", "print a bash or zsh completion script"),
    "man": ("shoal.controller.cli.man", "print the shoal(1) manual page (roff)"),
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name][0])


def _help_width() -> int:
    """What argparse's help formatter asks shutil for (COLUMNS, else the terminal's
    width, else 80, less 2), without importing shutil and the compression modules it
    loads: argparse makes a formatter for every option added, so every run paid for them."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, its width from `_help_width`."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, _help_width() if width is None else width)


class DescriptionFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """A subcommand's help: its module docstring kept as written."""


class Parser(argparse.ArgumentParser):
    """argparse with the usage-error status a subcommand asks for (`USAGE_STATUS`).

    `shoal check` is a monitoring plugin, where 2 means CRITICAL: its usage errors
    exit 3 (UNKNOWN) under its own usage line instead.
    """

    usage_status = EXIT_USAGE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.usage_status, f"{self.prog}: error: {message}\n")


def build_parser(only: str | None = None, *, every: bool = False,
                 alone: bool = False) -> tuple[Parser, Parser | None]:
    """The parser and, with `only`, that subcommand's parser (only its options are built);
    with `every`, all subcommands' options are built. With `alone`, the other
    subcommands are left out: their parsers only serve `shoal --help` and rejecting a
    misspelt name, and building them costs `shoal run` milliseconds at start-up."""
    parser = Parser(
        prog="shoal", description="Run commands on many hosts through shoal agents.",
        epilog="Exit status: 0 ok; otherwise the largest host status (128+N for signal N); "
               "255 unreachable/auth/timeout; 2 usage or configuration error; 70 internal error; "
               "130 interrupted; 141 stdout closed early (| head).")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    chosen: Parser | None = None
    for name, (_, help_text) in SUBCOMMANDS.items():
        if alone and name != only:
            continue
        p: Parser = sub.add_parser(name, help=help_text)
        if every or name == only:
            module = _load(name)
            p.description = module.__doc__
            p.formatter_class = DescriptionFormatter
            module.add_arguments(p)
            add_config_options(p)
            p.usage_status = getattr(module, "USAGE_STATUS", EXIT_USAGE)
            if name == only:
                chosen = p
    return parser, chosen


def _subcommand_of(argv: list[str]) -> str | None:
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def split_words(argv: list[str], name: str | None,
                sub: argparse.ArgumentParser | None) -> tuple[list[str], list[str]]:
    """Split argv into shoal's words and the rest.

    A subcommand that takes a command (`TAKES_COMMAND`) ends its options at the
    command's first word (controller/cli/words.py); the others at the first `--`.
    """
    if name is not None and sub is not None and getattr(_load(name), "TAKES_COMMAND", False):
        at = argv.index(name) + 1
        opts, words = split_at_command(sub, argv[at:])
        return argv[:at] + opts, words
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Entry point of `shoal`; returns the exit status (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    through_hub = run_through_hub(argv)  # the plain one-host run through a hub (cli/hubrun.py)
    if through_hub is not None:
        return through_hub
    if sys.stdout is None or sys.stderr is None:  # fd 1 or 2 closed before we started: Display has nothing to write to
        if sys.stderr is not None:
            sys.stderr.write("shoal: standard output is closed (to discard the output, redirect it to /dev/null)\n")
        return EXIT_USAGE
    setup_debug_log()
    name = _subcommand_of(argv)
    # `shoal run ...` (the subcommand first) needs no other subcommand's parser;
    # `shoal --help run` still lists them all.
    parser, sub = build_parser(name, alone=name is not None and argv[0] == name)
    opts, words = split_words(argv, name, sub)
    args, extra = parser.parse_known_args(opts)
    words = extra + words
    if any(w.startswith("-") for w in extra):
        (sub or parser).error(f"unrecognized arguments: {' '.join(w for w in extra if w.startswith('-'))}")
    display = Display(verbosity=_verbosity(args), color=color_from_args(args))
    try:
        if sub is not None:
            args = with_user_config(parser, sub, opts, args)
            display = Display(verbosity=_verbosity(args), color=color_from_args(args))
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
        quiet_broken_pipe()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line for the user, the traceback for the debug log
        log.exception("internal error in shoal %s", args.subcommand)
        display.error(f"internal error: {type(exc).__name__}: {exc} "
                      f"(a bug in shoal; set {DEBUG_LOG_ENV}=FILE for the traceback)")
        return EXIT_SOFTWARE


def _verbosity(args: argparse.Namespace) -> int:
    return 0 if getattr(args, "quiet", False) else 2 if getattr(args, "verbose", False) else 1


def quiet_broken_pipe() -> None:
    """Our reader went away (`shoal ... | head`): exit without a traceback."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())

"""`shoal`: a thin command line over the controller library.

Each subcommand lives in its own module with `add_arguments(parser)` and
`run(args, words, display) -> int`; this module only parses, dispatches, and maps
errors to exit statuses:

    0     success (every host exited 0)
    1-254 the largest exit status among the hosts (128+N: killed by signal N)
    255   a host was unreachable, failed authentication, timed out or was lost
    2     bad usage, configuration, inventory, key file or target pattern
    130   interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from types import ModuleType

from protocol.errors import AuthError, ConfigError, ShoalConnectionError, ShoalError

from .display import Display

__all__ = ["main", "SUBCOMMANDS", "EXIT_USAGE", "EXIT_UNREACHABLE", "EXIT_INTERRUPTED"]

EXIT_USAGE = 2
EXIT_UNREACHABLE = 255
EXIT_INTERRUPTED = 130

# Subcommand name -> module under controller/.
SUBCOMMANDS: dict[str, str] = {
    "run": "controller.cmd_run",
    "demo": "controller.cmd_demo",
    "keygen": "controller.cmd_keygen",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(SUBCOMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Run commands on many hosts through shoal agents.",
        epilog="Exit status: 0 ok; otherwise the largest host status (128+N for signal N); "
               "255 unreachable/auth/timeout; 2 usage or configuration error; 130 interrupted.")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = _load(name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
    return parser


def split_words(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: options before, the remote command after."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Entry point of `shoal`; returns the exit status (see module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, words = split_words(argv)
    parser = build_parser()
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
        return 128 + signal.SIGPIPE


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

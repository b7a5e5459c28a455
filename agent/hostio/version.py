"""What this shoal is: its package version, the wire protocol it speaks, the Python it runs on.

Both programs print it for `--version`, and the agent names itself with the package
version in HELLO and discovery replies, so `shoal ping` shows what each host runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from shoal.protocol.messages import PROTOCOL_VERSION

__all__ = ["UNKNOWN_VERSION", "VersionAction", "software_version", "version_text"]

# Reported when the package metadata is missing (a source tree run without installing).
UNKNOWN_VERSION = "0+unknown"


def software_version() -> str:
    """Return the installed `shoal` package's version, or UNKNOWN_VERSION."""
    from importlib import metadata  # tens of milliseconds: only when someone asks

    try:
        return metadata.version("shoal")
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


def version_text(program: str) -> str:
    """One line for `program --version`: package, protocol and Python versions."""
    import platform  # a millisecond or two `shoal run` need not pay

    return f"{program} {software_version()} (protocol {PROTOCOL_VERSION}, Python {platform.python_version()})"


class VersionAction(argparse.Action):
    """`--version`: print version_text to stdout and exit 0, looked up only when given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str = "print the version and exit") -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(version_text(parser.prog) + "\n")
        parser.exit(0)

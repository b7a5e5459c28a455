"""The argparse tree as plain data, for what is generated from it: completion and man.

Both read the parser `shoal` itself uses, so a new option shows up in the completion
scripts and the man page without anyone remembering to add it there. Each argument
gets a `kind` saying what completes its value: `targets` (inventory groups and host
names), `choice`, `file`, `value` (free text, nothing to offer) or `none` (a switch).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["Argument", "Command", "commands", "root_parser"]

# Arguments whose value is a target pattern, by argparse dest.
_TARGET_DESTS = ("targets", "exclude")
# Metavars that name something on the local file system.
_FILE_METAVARS = ("PATH", "DIR", "FILE", "LOCAL_DIR", "LOCAL... REMOTE_PATH")


@dataclass(frozen=True, slots=True)
class Argument:
    """One option (`flags` set) or positional (`flags` empty) of a subcommand."""

    flags: tuple[str, ...]
    metavar: str
    help: str
    kind: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, one-line summary, docstring and arguments in order."""

    name: str
    summary: str
    description: str
    usage: str
    arguments: tuple[Argument, ...]

    @property
    def options(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if a.flags)

    @property
    def positionals(self) -> tuple[Argument, ...]:
        return tuple(a for a in self.arguments if not a.flags)


def root_parser() -> argparse.ArgumentParser:
    """Return `shoal`'s parser with every subcommand's arguments built."""
    from shoal.controller.cli.main import build_parser

    return build_parser(every=True)[0]


def commands(parser: argparse.ArgumentParser | None = None) -> list[Command]:
    """Describe every subcommand of `parser` (default: `shoal`'s), hidden arguments left out."""
    parser = parser or root_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    found = []
    for name, child in sub.choices.items():
        arguments = tuple(_argument(action) for action in child._actions
                          if action.help != argparse.SUPPRESS)
        found.append(Command(name, summaries.get(name, ""), child.description or "",
                             child.format_usage().removeprefix("usage: ").strip(), arguments))
    return found


def _argument(action: argparse.Action) -> Argument:
    """Describe one action, deciding what completes its value."""
    choices = tuple(str(c) for c in action.choices) if action.choices else ()
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return Argument(tuple(action.option_strings), metavar, action.help or "", _kind(action, metavar),
                    choices)


def _kind(action: argparse.Action, metavar: str) -> str:
    """Say what completes the action's value."""
    if action.option_strings and action.nargs == 0:
        return "none"
    if action.dest in _TARGET_DESTS:
        return "targets"
    if action.choices:
        return "choice"
    if metavar in _FILE_METAVARS:
        return "file"
    return "value"

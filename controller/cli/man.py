"""Print the shoal(1) manual page, in roff, generated from the argparse help text.

    shoal man > shoal.1 && man -l shoal.1

Every subcommand gets a section holding its usage, its module docstring (the text
`shoal COMMAND --help` shows) and its options with their help, so the page cannot
drift from the command line it documents. `deploy/install.sh` installs the output as
share/man/man1/shoal.1 under its prefix.
"""

from __future__ import annotations

import argparse

from shoal.controller.cli.argtree import Argument, Command, commands, root_parser
from shoal.controller.term.display import Display


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    display.out(manual().encode())
    return 0


def manual() -> str:
    """Return the whole page."""
    parser = root_parser()
    lines = [".TH SHOAL 1 \"\" \"shoal\" \"User Commands\"",
             ".SH NAME", "shoal \\- run commands on many hosts through shoal agents",
             ".SH SYNOPSIS", ".B shoal", ".I COMMAND", "[\\fIOPTIONS\\fR] [\\fB\\-\\-\\fR \\fIREMOTE COMMAND\\fR]",
             ".SH DESCRIPTION", *_paragraphs(parser.description or ""),
             ".SH COMMANDS"]
    for command in commands(parser):
        lines += _command(command)
    lines += [".SH EXIT STATUS", *_paragraphs(parser.epilog or ""),
              ".SH ENVIRONMENT", ".TP", ".B SHOAL_INVENTORY",
              "the inventory file, when \\fB\\-\\-inventory\\fR is not given"
              " (else ~/.config/shoal/inventory.toml)",
              ".TP", ".B NO_COLOR", "when set, output is never coloured"]
    return "\n".join(lines) + "\n"


def _command(command: Command) -> list[str]:
    """The `.SS` section of one subcommand."""
    lines = [f".SS {_escape('shoal ' + command.name)}", _escape(command.summary),
             ".PP", ".nf", *_usage_lines(command.usage), ".fi"]
    lines += _paragraphs(command.description)
    for argument in command.arguments:
        lines += [".TP", _term(argument), _escape(" ".join(argument.help.split()))]
    return lines


def _usage_lines(usage: str) -> list[str]:
    """argparse's usage with its continuation lines indented by four, not by the prog."""
    first, *rest = usage.splitlines()
    return [_escape(first), *(_escape("    " + line.strip()) for line in rest)]


def _term(argument: Argument) -> str:
    """The bold flags (or italic name) heading one argument's entry."""
    if not argument.flags:
        return f"\\fI{_escape(argument.metavar)}\\fR"
    flags = ", ".join(f"\\fB{_escape(flag).replace('-', chr(92) + '-')}\\fR" for flag in argument.flags)
    return flags if argument.kind == "none" else f"{flags} \\fI{_escape(argument.metavar)}\\fR"


def _paragraphs(text: str) -> list[str]:
    """Roff paragraphs from help text: indented blocks stay as typed, the rest is filled."""
    lines: list[str] = []
    for block in _dedent(text).split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(" "):
            lines += [".PP", ".RS 4", ".nf", *(_escape(line) for line in block.splitlines()), ".fi", ".RE"]
        else:
            lines += [".PP", _escape(" ".join(block.split()))]
    return lines


def _dedent(text: str) -> str:
    """Drop the docstring's common indentation; keep blank-line paragraph breaks."""
    import inspect

    return inspect.cleandoc(text)


def _escape(text: str) -> str:
    """Make text literal for roff: backslashes, and control characters at line starts."""
    text = text.replace("\\", "\\e")
    return "\\&" + text if text.startswith((".", "'")) else text

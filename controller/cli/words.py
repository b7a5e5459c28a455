"""Where shoal's options end and the remote command begins.

`shoal run TARGETS sed -n 1p f` must run `sed -n 1p f`: as clush and ssh do, the
first word after the subcommand's positionals (TARGETS) that is not an option starts
the command, and every word from there on belongs to it, `--` or not. argparse cannot
say this (REMAINDER would also swallow options between TARGETS and the command,
intermixed parsing takes `-n` wherever it is), so the argv is cut here first, using
the parser only to learn which options take a value.
"""

from __future__ import annotations

import argparse

__all__ = ["split_at_command"]


def split_at_command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split a subcommand's argv into (shoal's options and positionals, the command's words).

    A `--` before the command also starts it and is dropped. An unknown option is
    assumed to take no value; argparse then reports it.
    """
    values = _value_counts(parser)
    positionals = sum(1 for action in parser._actions if not action.option_strings)
    seen, i = 0, 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[:i], argv[i + 1:]
        if word.startswith("-") and word != "-":
            i += 1 + _values_after(word, values)
            continue
        if seen == positionals:
            return argv[:i], argv[i:]
        seen += 1
        i += 1
    return argv, []


def _value_counts(parser: argparse.ArgumentParser) -> dict[str, int]:
    """Map each option string to the number of separate words its value takes."""
    counts = {}
    for action in parser._actions:
        n = 1 if action.nargs is None else action.nargs if isinstance(action.nargs, int) else 0
        counts.update(dict.fromkeys(action.option_strings, n))
    return counts


def _values_after(word: str, values: dict[str, int]) -> int:
    """How many following words are the value of option `word` (argparse's reading of it)."""
    if word.startswith("--"):
        if "=" in word:
            return 0
        matches = [name for name in values if name.startswith(word)]  # argparse accepts abbreviations
        name = word if word in values else matches[0] if len(matches) == 1 else ""
        return values.get(name, 0)
    for j in range(1, len(word)):  # a cluster of short flags: -nq, -nt5, -nt 5
        n = values.get("-" + word[j])
        if n is None:
            return 0  # unknown: argparse reports it
        if n:
            return 0 if j + 1 < len(word) else n  # the rest of the word is the value
    return 0

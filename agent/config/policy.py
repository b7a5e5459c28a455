"""What a key may do: `KeyPolicy`, one named key with its allowed commands, metrics and file roots."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shoal.protocol.errors import ConfigError
from shoal.agent import restrict
from shoal.agent.config.checks import _boolean, _store, _strings, _text, _absolute_path
from shoal.agent.config.destinations import parse_destination

__all__ = ["KeyPolicy"]

# Key names appear in logs and the audit log: keep them to one plain word.
_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Words a command pattern may match: nothing a shell would expand or act on.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:=@%+,-]+")
_WILDCARD = re.compile(r"[*?\[]")


def _words_match(words: list[str], entry: str) -> bool:
    patterns = entry.split()
    return len(patterns) == len(words) and all(
        fnmatch.fnmatchcase(w, p) for w, p in zip(words, patterns))


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A named shared key and what a client holding it may do.

    `allow_all` permits every command, metrics and files (its other fields are then
    fixed: no command list, no file roots). A listed key may run only the command
    lines in `commands`. An entry matches the request's command line exactly as
    written, or, when it holds a wildcard (`*`, `?`, `[...]`), word by word as an
    fnmatch pattern. A pattern only ever matches plain words (letters, digits and
    `_./:=@%+,-`), never a word containing `..`, and the word counts must agree: so
    `systemctl status *` admits `systemctl status sshd` but not
    `systemctl status x; reboot`, `systemctl status $(reboot)` or a path escaping
    with `..`, and the shell is given nothing it could interpret.

    A listed key's request may set only the environment variables named in `env`
    and a working directory only when `cwd` is true; its programs are found on a
    fixed trusted PATH (agent/restrict.py says why).

    `relay` lists where the key may ask this agent to open a relayed stream
    (agent/config/destinations.py). None means the default: every destination for
    an `allow = "all"` key (it can already run any program here, so relaying grants
    nothing new), none for a listed key. A list narrows either; `[]` forbids relaying.
    """

    name: str
    file: str
    allow_all: bool = False
    commands: tuple[str, ...] = ()
    metrics: bool = False
    files: bool = False
    file_roots: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    cwd: bool = False
    users: tuple[str, ...] | None = None  # issue 17: who its commands may run as (agent/runas.py)
    relay: tuple[str, ...] | None = None  # issue 19: destinations it may relay to; None: the default

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _KEY_NAME.fullmatch(self.name):
            raise ConfigError("key name must be 1-64 letters, digits, '_', '.' or '-'", "name")
        _absolute_path("file", self.file)
        _boolean("allow_all", self.allow_all)
        _store(self, "commands", _strings("commands", self.commands, _command_entry))
        _boolean("metrics", self.metrics)
        _boolean("files", self.files)
        if self.file_roots is not None:
            roots = _strings("file_roots", self.file_roots, _absolute_path)
            _store(self, "file_roots", tuple(os.path.normpath(root) for root in roots))
        _store(self, "env", _strings("env", self.env, restrict.check_env_name))
        _boolean("cwd", self.cwd)
        if self.users is not None:  # issue 17
            _store(self, "users", _strings("users", self.users))
        if self.relay is not None:  # issue 19: kept in canonical spelling
            _store(self, "relay", tuple(str(d) for d in _strings("relay", self.relay, parse_destination)))
        self._check_combination()

    def _check_combination(self) -> None:
        if self.allow_all:
            if self.commands or self.file_roots is not None or self.env or self.cwd:
                where = next(name for name in ("commands", "file_roots", "env", "cwd")
                             if getattr(self, name) not in ((), None, False))
                raise ConfigError(f"'{where}' only applies to allow = \"listed\" keys", where)
            _store(self, "metrics", True)
            _store(self, "files", True)
        elif self.file_roots is not None and not self.files:
            raise ConfigError("file_roots needs files = true", "file_roots")

    def allows_command(self, argv: Sequence[str] | None, shell: str | None) -> bool:
        """Whether this key may run the command (a shell string, else an argv)."""
        if self.allow_all:
            return True
        if shell is not None:
            line, words = shell, shell.split()
        elif argv:
            line, words = shlex.join(argv), list(argv)
        else:
            return False
        if line in self.commands and not _WILDCARD.search(line):
            return True  # exactly as the admin wrote it (entries with wildcards are patterns)
        if not all(_PLAIN_WORD.fullmatch(w) and ".." not in w for w in words):
            return False
        return any(_words_match(words, entry) for entry in self.commands if _WILDCARD.search(entry))

    def refuse_request(self, argv: Sequence[str] | None, shell: str | None, env: Mapping[str, str],
                       cwd: str | None) -> str | None:
        """Why the request's env, cwd or program path may not be used under this key, or None."""
        if self.allow_all:
            return None
        words = shell.split() if shell is not None else list(argv or ())
        return restrict.refusal(self.env, self.cwd, words[0] if words else None, env, cwd)

    def allows_metrics(self) -> bool:
        return self.allow_all or self.metrics

    def may_relay(self) -> bool:
        """Whether this key may relay anywhere at all."""
        return self.allow_all if self.relay is None else bool(self.relay)

    def allows_relay(self, address: str | None, port: int, path: str | None) -> bool:
        """Whether this key may relay to `address`:`port` (an IP literal, resolved) or to socket `path`."""
        if self.relay is None:
            return self.allow_all
        return any(parse_destination("relay", entry).allows(address, port, path) for entry in self.relay)

    def allows_files(self, path: str) -> bool:
        """Whether this key may put or get `path`.

        Symlinks are resolved before comparing with the roots, so a link inside a
        root cannot point the transfer outside it. The check is made now; the file
        service must still open without following links swapped in afterwards.
        """
        if self.allow_all or (self.files and self.file_roots is None):
            return True
        if not self.files or not self.file_roots or not os.path.isabs(path):
            return False
        real = os.path.realpath(path)
        return any(_inside(real, os.path.realpath(root)) for root in self.file_roots)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _command_entry(name: str, value: object) -> str:
    entry = _text(name, value)
    if not entry.strip():
        raise ConfigError("empty command entry", name)
    return entry
